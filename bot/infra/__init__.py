"""Servers of the production layout, started from Debian's packages when they are not reachable.

`bot.infra.postgres` (the DSP database and Rasa's tracker store) and `bot.infra.redis` (Rasa's lock
store and the gateway's conversation locks). Used by `make serve-prod`, `make load` and the tests of
the production layout; a real deployment points the URLs at managed servers and starts nothing here.
"""
