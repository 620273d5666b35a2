"""Rasa NLU graph components of MyDSP Assistant (imported by Rasa's own environment, Python 3.10)."""
