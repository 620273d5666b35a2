"""`make load`: many patients doing whole tasks at once on the production layout; one Rasa killed mid-run.

Starts the production layout of `bot.launcher.Services` (PostgreSQL, Redis, two Rasa instances,
two action servers, the gateway with two workers) on free loopback ports with a fresh state
directory, creates one activation letter per simulated patient in the DSP database, then runs
every patient concurrently (their starts spread over `--ramp` seconds, a short think time between
turns). Each patient does two whole tasks through the gateway, as a front end would:

1. activation with the letter: matricule, activation code, password twice, the e-mail button,
   the e-mail address, the one-time code read from the DSP outbox (8 turns);
2. log in: matricule, password, a new one-time code, terms accepted, PIN offer declined, then
   « mes documents » (7 turns).

Every turn carries an `Idempotency-Key` header (`<conversation>-<n>`). Checks, all counted, any
one of which makes the command exit 1:
- errors: a turn still without a 200 after RETRIES retries with the same key (a front end
  retries a timeout, a 429 or a 503 with its Idempotency-Key), or an exception;
- wrong step: a reply that does not ask what this patient's task expects next (a reply meant for
  another conversation, or a lost/repeated turn, shows up here first);
- in the end, per conversation, Rasa's tracker (read from a live instance) holds exactly the turns
  this patient sent, each once and in order (turn ids in the user events' metadata): none lost,
  none duplicated, none from another conversation; and each patient's account is active in the
  DSP database.

With two or more Rasa instances, `rasa-1` is killed (SIGKILL) once `--kill-at` of the planned turns
are done; the conversations continue on the other instance. Prints a table and writes the same
figures to `benchmarks/results/load-<UTC timestamp>.json`.

Usage: .venv/bin/python benchmarks/load.py [--patients 200] [--rasa-instances 2] [--ramp 30]
           [--think 0.5] [--kill-at 0.4] [--max-seconds 1200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import httpx  # noqa: E402
from bench import latency_summary, rss_mb  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
ACTIVATE = "Bonjour, je voudrais activer mon compte eSanté avec la lettre reçue"
LOGIN = "je veux me connecter à mon dossier"
DECLINE_PIN = "non merci"
DOCUMENTS = "mes documents"
CODE = re.compile(r"(?<![0-9A-Za-z])([0-9]{6,8})(?![0-9A-Za-z])")


@dataclass
class Patient:
    """One simulated patient: their letter, chosen password and conversation."""

    index: int
    matricule: str
    activation_code: str
    email: str
    password: str
    conversation: str
    sent: list[str] = field(default_factory=list)  # idempotency keys (= turn ids), in order
    done: bool = False
    failure: str | None = None


@dataclass
class Run:
    """Counters shared by the simulated patients."""

    planned_turns: int
    latencies: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)  # perf_counter() at each turn's answer
    started_at: float = field(default_factory=time.perf_counter)
    errors: int = 0
    wrong_steps: int = 0
    retries: int = 0
    completed_turns: int = 0
    killed_at_s: float | None = None
    kill_event: asyncio.Event = field(default_factory=asyncio.Event)


def pending(reply: dict[str, Any]) -> str | None:
    """Return the kind of protected input the reply asks for, if any."""
    for message in reversed(reply.get("messages") or []):
        if message.get("protected_input"):
            return str(message["protected_input"]["kind"])
    return None


def payloads(reply: dict[str, Any]) -> list[str]:
    """Return the payloads of the reply's buttons."""
    return [b["payload"] for m in reply.get("messages") or [] for b in (m.get("buttons") or [])]


def last_code(email: str) -> str:
    """Read the one-time code last sent to `email` from the DSP outbox (in process, blocking)."""
    from sqlalchemy import func, select

    from bot.dsp.orm import OutboxMessage
    from bot.dsp.uow import UnitOfWork

    with UnitOfWork() as uow:
        row = uow.session.scalars(select(OutboxMessage).where(func.lower(OutboxMessage.to_address) == email.lower())
                                  .order_by(OutboxMessage.id.desc()).limit(1)).first()
        body = row.body if row else ""
    match = CODE.search(body)
    if not match:
        raise RuntimeError("no one-time code in the outbox")
    return match.group(1)


def create_patients(count: int, run_id: str) -> list[Patient]:
    """Issue one activation letter per simulated patient (fictitious, with an e-mail address)."""
    from bot.dsp.accounts import issue_letter
    from bot.dsp.uow import UnitOfWork

    patients = []
    for index in range(count):
        email = f"load-{run_id}-{index}@example.org"
        with UnitOfWork() as uow:
            letter = issue_letter(uow, email=email, given_name=f"Charge{index}", family_name="Simulée")
            uow.commit()
        patients.append(Patient(index, letter.matricule, letter.activation_code, email,
                                f"Velo-Rouge-{run_id}-{index}", f"load-{run_id}-{index:03d}"))
    return patients


def active_accounts(patients: list[Patient]) -> int:
    """Count the patients whose account is now active in the DSP database."""
    from sqlalchemy import select

    from bot.dsp.orm import Account
    from bot.dsp.orm import Patient as PatientRow
    from bot.dsp.uow import UnitOfWork

    matricules = {p.matricule for p in patients}
    with UnitOfWork() as uow:
        states = uow.session.execute(select(PatientRow.matricule, Account.state)
                                     .join(Account, Account.patient_id == PatientRow.id)
                                     .where(PatientRow.matricule.in_(matricules))).all()
    return sum(1 for _, state in states if state == "activated")


class Client:
    """One patient's side of the gateway contract, with timing and the idempotency key of every turn."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, key: str, patient: Patient, run: Run) -> None:
        self.http = http
        self.base = f"{base_url}/v1/conversations/{patient.conversation}"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.patient = patient
        self.run = run

    async def send(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one turn as a front end does: retried with the same Idempotency-Key on failure.

        A timeout, a 429 (after its Retry-After) or a 503 is retried at most RETRIES times; the
        latency counts from the first attempt.

        Raises:
            RuntimeError: still no 200 after the retries (an error of the run).
        """
        key = f"{self.patient.conversation}-{len(self.patient.sent) + 1}"
        self.patient.sent.append(key)
        started = time.perf_counter()
        outcome = "no attempt"
        response = None
        for attempt in range(RETRIES + 1):
            if attempt:
                self.run.retries += 1
            try:
                response = await self.http.post(f"{self.base}/{path}", json=body,
                                                headers={**self.headers, "Idempotency-Key": key})
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                outcome = type(exc).__name__
                continue
            if response.status_code in (429, 503):
                outcome = f"HTTP {response.status_code}"
                await asyncio.sleep(min(10.0, float(response.headers.get("Retry-After") or 2)))
                continue
            break
        self.run.latencies.append(time.perf_counter() - started)
        self.run.finished_at.append(time.perf_counter() - self.run.started_at)
        self.run.completed_turns += 1
        if self.run.completed_turns >= self.run.planned_turns * KILL_AT[0]:
            self.run.kill_event.set()
        if response is None or response.status_code in (429, 503):
            raise RuntimeError(f"{outcome} after {RETRIES} retries")
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}")
        return dict(response.json())

    async def say(self, text: str) -> dict[str, Any]:
        """Send free text (French)."""
        return await self.send("messages", {"text": text, "language": "fr"})

    async def choose(self, payload: str) -> dict[str, Any]:
        """Send a button's payload."""
        return await self.send("messages", {"payload": payload})

    async def protect(self, value: str) -> dict[str, Any]:
        """Answer the pending protected input."""
        return await self.send("protected", {"value": value})


#: Fraction of planned turns after which rasa-1 is killed (set from the command line).
KILL_AT = [0.4]
#: Retries of one turn (same Idempotency-Key) after a timeout, a 429 or a 503, as a front end would.
RETRIES = 3


class WrongStep(Exception):
    """A reply did not ask what the task expects next."""


def expect(condition: bool, what: str) -> None:
    """Raise WrongStep(what) when `condition` is false."""
    if not condition:
        raise WrongStep(what)


async def patient_task(client: Client, think: float, rng: random.Random) -> None:
    """Activation with the letter, then log in and « mes documents » (15 turns)."""
    p = client.patient

    async def pause() -> None:
        await asyncio.sleep(rng.uniform(0.5, 1.5) * think)

    reply = await client.say(ACTIVATE)
    expect(pending(reply) == "matricule", "activation: matricule")
    for value, nxt in ((p.matricule, "activation_code"), (p.activation_code, "password"),
                       (p.password, "password_confirm")):
        await pause()
        reply = await client.protect(value)
        expect(pending(reply) == nxt, f"activation: {nxt}")
    await pause()
    reply = await client.protect(p.password)
    email_button = next((x for x in payloads(reply) if "email" in x), None)
    expect(email_button is not None, "activation: e-mail button")
    await pause()
    reply = await client.choose(str(email_button))
    expect(pending(reply) == "email", "activation: e-mail")
    await pause()
    reply = await client.protect(p.email)
    expect(pending(reply) == "otp", "activation: one-time code")
    await pause()
    reply = await client.protect(await asyncio.to_thread(last_code, p.email))
    expect(pending(reply) is None, "activation: done")
    await pause()
    reply = await client.say(LOGIN)
    expect(pending(reply) == "matricule", "login: matricule")
    for value, nxt in ((p.matricule, "password"), (p.password, "otp")):
        await pause()
        reply = await client.protect(value)
        expect(pending(reply) == nxt, f"login: {nxt}")
    await pause()
    reply = await client.protect(await asyncio.to_thread(last_code, p.email))
    accept = next((x for x in payloads(reply) if "accept_terms" in x), None)
    expect(accept is not None, "login: terms")
    await pause()
    reply = await client.choose(str(accept))
    expect(any("set_pin" in x for x in payloads(reply)), "login: PIN offer")
    await pause()
    reply = await client.say(DECLINE_PIN)
    expect(pending(reply) is None and bool(reply.get("messages")), "login: PIN declined")
    await pause()
    reply = await client.say(DOCUMENTS)
    expect(pending(reply) is None and bool(reply.get("messages")), "documents")
    p.done = True


TURNS_PER_PATIENT = 15


async def run_patients(base_url: str, key: str, patients: list[Patient], run: Run, ramp: float, think: float,
                       max_seconds: float) -> None:
    """Run every patient's task concurrently, starts spread over `ramp` seconds."""
    limits = httpx.Limits(max_connections=len(patients) + 10, max_keepalive_connections=len(patients) + 10)
    async with httpx.AsyncClient(timeout=150, limits=limits) as http:
        async def one(patient: Patient) -> None:
            rng = random.Random(patient.index)
            await asyncio.sleep(ramp * patient.index / max(1, len(patients)))
            try:
                await patient_task(Client(http, base_url, key, patient, run), think, rng)
            except WrongStep as exc:
                run.wrong_steps += 1
                patient.failure = f"wrong step: {exc}"
            except (httpx.HTTPError, RuntimeError) as exc:
                run.errors += 1
                patient.failure = f"error: {type(exc).__name__}: {exc}"

        await asyncio.wait_for(asyncio.gather(*(one(p) for p in patients)), timeout=max_seconds)


def tracker_check(rasa_urls: list[str], token: str, patients: list[Patient]) -> dict[str, int]:
    """Compare each conversation's tracker with the turns its patient sent.

    Returns:
        {"lost", "duplicated", "foreign", "unordered", "checked"}: turns sent but absent, turn ids
        seen more than once, user events whose turn id belongs to another conversation (or none),
        conversations whose turns are out of order.
    """
    counts = {"lost": 0, "duplicated": 0, "foreign": 0, "unordered": 0, "checked": 0}
    with httpx.Client(timeout=60) as http:
        for patient in patients:
            tracker = None
            for url in rasa_urls:
                try:
                    response = http.get(f"{url}/conversations/{patient.conversation}/tracker",
                                        params={"token": token, "include_events": "ALL"})
                    if response.status_code == 200:
                        tracker = response.json()
                        break
                except httpx.HTTPError:
                    continue
            if tracker is None:
                counts["lost"] += len(patient.sent)
                continue
            seen = [str((e.get("metadata") or {}).get("turn_id") or "") for e in tracker.get("events", [])
                    if e.get("event") == "user"]
            mine = [t for t in seen if t.startswith(patient.conversation + "-")]
            counts["foreign"] += len(seen) - len(mine)
            counts["duplicated"] += len(mine) - len(set(mine))
            counts["lost"] += len(set(patient.sent) - set(mine))
            order = [t for t in dict.fromkeys(mine)]
            if order != [t for t in patient.sent if t in set(mine)]:
                counts["unordered"] += 1
            counts["checked"] += 1
    return counts


def phase_figures(run: Run, ramp: float) -> dict[str, dict[str, float]]:
    """Turns per second and latency while two Rasa instances served, and after one was killed.

    The first phase runs from the end of the ramp (every patient started) to the kill; the second
    from the kill + 35 s (Rasa's lock lifetime of the dead instance, 30 s, and the failover) to the
    answer of the 90th percentile (the tail, when few patients are left, measures them, not the
    servers). Without a kill, one phase "all" from the end of the ramp.

    Returns:
        {phase: {"seconds", "turns", "turns_per_s", "p50_ms", "p95_ms"}} (phases with turns only).
    """
    if not run.finished_at:
        return {}
    end = sorted(run.finished_at)[max(0, int(0.9 * len(run.finished_at)) - 1)]
    if run.killed_at_s is None:
        bounds = {"all": (ramp, end)}
    else:
        bounds = {"two_rasa": (ramp, run.killed_at_s), "one_rasa": (run.killed_at_s + 35.0, end)}
    out: dict[str, dict[str, float]] = {}
    for name, (start, stop) in bounds.items():
        picked = [lat for lat, at in zip(run.latencies, run.finished_at, strict=True) if start <= at <= stop]
        if not picked or stop <= start:
            continue
        summary = latency_summary(picked)
        out[name] = {"seconds": round(stop - start, 1), "turns": len(picked),
                     "turns_per_s": round(len(picked) / (stop - start), 2),
                     "p50_ms": summary["p50_ms"], "p95_ms": summary["p95_ms"]}
    return out


def table(result: dict[str, Any]) -> str:
    """Format the result as a plain-text table."""
    lat = result["latency"]
    checks = result["checks"]
    lines = [
        f"MyDSP load test — {result['timestamp']} — {result['machine']}",
        f"layout: {result['rasa_instances']} Rasa instance(s), 2 action servers, gateway x2 workers, "
        "PostgreSQL, Redis",
        f"patients {result['patients']} (ramp {result['ramp_s']} s, think ~{result['think_s']} s), "
        f"turns {result['turns']} of {result['planned_turns']} planned, tasks completed {result['completed']}",
        f"duration {result['duration_s']:.1f} s   throughput {result['turns_per_s']:.2f} turns/s",
        f"latency per turn: p50 {lat['p50_ms']:.0f} ms   p95 {lat['p95_ms']:.0f} ms   p99 {lat['p99_ms']:.0f} ms",
        f"errors {result['errors']}   retries {result['retries']}   wrong steps {result['wrong_steps']}   "
        f"lost {checks['lost']}   "
        f"duplicated {checks['duplicated']}   foreign {checks['foreign']}   out of order {checks['unordered']}   "
        f"accounts active {result['accounts_active']}/{result['patients']}",
        "rasa-1 killed at " + (f"{result['killed_at_s']:.1f} s" if result["killed_at_s"] is not None else "—"),
        *(f"  phase {name}: {p['turns']} turns in {p['seconds']} s = {p['turns_per_s']} turns/s, "
          f"p50 {p['p50_ms']:.0f} ms, p95 {p['p95_ms']:.0f} ms" for name, p in result["phases"].items()),
        "resident memory after the run (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in result["rss_mb"].items()),
        f"start to healthy: {result['startup_s']:.1f} s",
        "verdict: " + ("PASS" if result["ok"] else "FAIL"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the load test; exit 0 when every check passes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--rasa-instances", type=int, default=2)
    parser.add_argument("--ramp", type=float, default=60.0, help="seconds over which the patients start")
    parser.add_argument("--think", type=float, default=3.0,
                        help="mean think time between turns, seconds (typing a code, reading the e-mail)")
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of planned turns before rasa-1 dies")
    parser.add_argument("--max-seconds", type=float, default=1200.0, help="bound of the whole run")
    args = parser.parse_args(argv)
    KILL_AT[0] = args.kill_at

    from bot.launcher import Services
    from tests.support import free_port

    state = Path(tempfile.mkdtemp(prefix="mydsp-load-"))
    run_id = datetime.now(UTC).strftime("%H%M%S")
    env = {"DSP_STATE_DIR": str(state), "GATEWAY_API_KEY": "load-" + os.urandom(8).hex(),
           "RASA_AUTH_TOKEN": "load-" + os.urandom(8).hex(), "RASA_TIMEOUT_SECONDS": "120"}
    pg_port, redis_port = free_port(), free_port()
    env["DSP_DATABASE_URL"] = f"postgresql+psycopg://mydsp:load-{run_id}@127.0.0.1:{pg_port}/mydsp"
    env["RASA_TRACKER_URL"] = f"postgresql://mydsp:load-{run_id}@127.0.0.1:{pg_port}/mydsp_rasa"
    env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    services = Services(layout="prod", gateway_port=free_port(),
                        rasa_ports=[free_port() for _ in range(args.rasa_instances)],
                        actions_ports=[free_port() for _ in range(2)], env=env, telegram=False)
    print(f"Starting the production layout ({args.rasa_instances} Rasa instance(s)); state in {state}...", flush=True)
    started = time.perf_counter()
    services.start(timeout_s=600)
    startup_s = time.perf_counter() - started
    try:
        from bot.dsp.db import reset_engine
        from bot.dsp.settings import get_settings

        get_settings.cache_clear()
        reset_engine()
        print(f"Healthy in {startup_s:.1f} s. Creating {args.patients} letters...", flush=True)
        patients = create_patients(args.patients, run_id)
        run = Run(planned_turns=args.patients * TURNS_PER_PATIENT)
        kill = args.rasa_instances >= 2 and args.kill_at < 1

        async def orchestrate() -> float:
            t0 = time.perf_counter()
            run.started_at = t0

            async def killer() -> None:
                await run.kill_event.wait()
                await asyncio.to_thread(services.kill, "rasa-1")
                run.killed_at_s = time.perf_counter() - t0
                print(f"rasa-1 killed at {run.killed_at_s:.1f} s ({run.completed_turns} turns done)", flush=True)

            task = asyncio.create_task(killer()) if kill else None
            await run_patients(services.gateway_url, env["GATEWAY_API_KEY"], patients, run, args.ramp, args.think,
                               args.max_seconds)
            if task is not None:
                task.cancel()
            return time.perf_counter() - t0

        print(f"Running {args.patients} patients, {run.planned_turns} turns planned...", flush=True)
        duration = asyncio.run(orchestrate())
        rss = {name: rss_mb(pid) for name, pid in services.pids().items()}
        live = [u for i, u in enumerate(services.rasa_urls) if not (kill and i == 0)]
        checks = tracker_check(live, env["RASA_AUTH_TOKEN"], patients)
        accounts = active_accounts(patients)
    finally:
        clusters = [Path(h.cluster_dir) for h in services.stores.values() if getattr(h, "cluster_dir", None)]
        services.stop()
        for cluster in clusters:  # a throw-away server (as root it lives outside the state dir)
            shutil.rmtree(cluster, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    turns = len(run.latencies)
    phases = phase_figures(run, args.ramp)
    failures = [p.failure for p in patients if p.failure]
    result = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"), "machine": f"{os.cpu_count()} cores",
        "rasa_instances": args.rasa_instances, "patients": args.patients, "ramp_s": args.ramp, "think_s": args.think,
        "planned_turns": run.planned_turns, "turns": turns, "completed": sum(p.done for p in patients),
        "duration_s": duration, "turns_per_s": turns / duration if duration else 0.0,
        "latency": latency_summary(run.latencies), "errors": run.errors, "retries": run.retries,
        "wrong_steps": run.wrong_steps,
        "phases": phases, "checks": checks, "accounts_active": accounts, "killed_at_s": run.killed_at_s, "rss_mb": rss,
        "startup_s": startup_s, "failures": failures[:20],
    }
    result["ok"] = (run.errors == 0 and run.wrong_steps == 0 and result["completed"] == args.patients
                    and checks["lost"] == 0 and checks["duplicated"] == 0 and checks["foreign"] == 0
                    and checks["unordered"] == 0 and accounts == args.patients)
    print(table(result))
    for failure in failures[:10]:
        print("  " + failure)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"load-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"written: {out.relative_to(REPO)}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
