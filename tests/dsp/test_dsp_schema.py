"""An embedded database made by an older version gets the new nullable columns on start."""

from __future__ import annotations

import sqlite3

from bot.dsp.db import get_engine


def test_an_older_sqlite_file_gets_the_new_columns(dsp_env):
    path = dsp_env / "dsp.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE audit_events (id INTEGER PRIMARY KEY, at DATETIME, actor VARCHAR(64) NOT NULL, "
                    "on_behalf_of VARCHAR(64), patient_id INTEGER, action VARCHAR(64) NOT NULL, "
                    "outcome VARCHAR(64) NOT NULL, detail TEXT)")
        old.execute("INSERT INTO audit_events (actor, action, outcome) VALUES ('cli', 'demo.seed', 'ok')")
    get_engine()
    with sqlite3.connect(path) as upgraded:
        columns = {row[1] for row in upgraded.execute("PRAGMA table_info(audit_events)")}
        kept = upgraded.execute("SELECT actor, action, object FROM audit_events").fetchall()
    assert {"actor_patient_id", "object"} <= columns
    assert kept == [("cli", "demo.seed", None)]
