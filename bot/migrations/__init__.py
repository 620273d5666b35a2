"""Alembic migrations of the application database (DSP domain + gateway tables); see README.md here."""
