"""Rasa SDK action server of MyDSP Assistant: thin adapters from the dialogue to `bot.dsp`.

Run with `python -m rasa_sdk --actions actions` (the launcher does). Every module of this package
is imported by the SDK, which registers each concrete `Action` subclass.
"""
