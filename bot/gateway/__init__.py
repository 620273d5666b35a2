"""The gateway: the one HTTP front door of every channel (see docs/design.md)."""
