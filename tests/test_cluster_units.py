"""The gateway's production layout pieces: Rasa instance picker, failover, exactly-once turns, Redis locks,
the Idempotency-Key store, and two gateway processes sharing Redis and PostgreSQL.

Rasa is a small fake on loopback (tests/fake_rasa.py); Redis and PostgreSQL are real, started by the
tests through `bot.infra.redis.ensure_redis` and `bot.infra.postgres.ensure_postgres`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from bot.gateway import cluster
from tests.fake_rasa import FakeRasaServers, answer_of, rest_output
from tests.support import REPO, free_port

TOKEN = "fake-token"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis on a free loopback port, started through ensure_redis."""
    from bot.infra.redis import ensure_redis

    url = f"redis://127.0.0.1:{free_port()}/0"
    server = ensure_redis(url, tmp_path_factory.mktemp("redis"))
    assert server is not None, "a fresh port: ensure_redis must start one"
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL on a free loopback port, started through ensure_postgres (deleted at the end)."""
    from bot.infra.postgres import ensure_postgres

    url = f"postgresql+psycopg://mydsp:{uuid.uuid4().hex}@127.0.0.1:{free_port()}/mydsp_cluster_test"
    server = ensure_postgres(url, tmp_path_factory.mktemp("postgres"))
    assert server is not None
    try:
        yield url
    finally:
        server.destroy()


def use_database(monkeypatch: pytest.MonkeyPatch, state_dir: Path, url: str) -> None:
    """Point this process's DSP settings and engine at `url` (undone by `reset_database`)."""
    from bot.dsp.db import reset_engine
    from bot.dsp.settings import get_settings

    monkeypatch.setenv("DSP_STATE_DIR", str(state_dir))
    monkeypatch.setenv("DSP_DATABASE_URL", url)
    get_settings.cache_clear()
    reset_engine()


@pytest.fixture
def sqlite_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from bot.dsp.db import reset_engine
    from bot.dsp.settings import get_settings

    url = f"sqlite:///{tmp_path / 'dsp.sqlite3'}"
    use_database(monkeypatch, tmp_path, url)
    try:
        yield url
    finally:
        reset_engine()
        get_settings.cache_clear()


@pytest.fixture
def fakes() -> Iterator[FakeRasaServers]:
    with FakeRasaServers(2) as servers:
        yield servers


class RecordingRasaLocks:
    """Stands for Rasa's Redis lock store: records the conversations whose lock was cleared."""

    def __init__(self) -> None:
        self.cleared: list[str] = []

    async def clear(self, conversation_id: str) -> None:
        self.cleared.append(conversation_id)

    async def aclose(self) -> None:
        pass


def make_cluster(client: httpx.AsyncClient, urls: list[str], **kwargs) -> cluster.RasaCluster:
    return cluster.RasaCluster(tuple(urls), TOKEN, client, **{"timeout_s": 5.0, "retry_after_s": 30.0, **kwargs})


# --------------------------------------------------------------------------- replies rebuilt from the tracker
def test_rest_messages_is_the_rest_channel_output_of_a_bot_event():
    events = answer_of("bonjour")
    assert [m for e in events for m in cluster.rest_messages(e, "c-1")] == rest_output("c-1", events)
    image = {"event": "bot", "text": None, "metadata": {},
             "data": {"image": "https://x/i.png", "attachment": "https://x/i.png", "buttons": None}}
    assert cluster.rest_messages(image, "c") == [{"recipient_id": "c", "image": "https://x/i.png"}]
    quick = {"event": "bot", "text": "Choisissez", "metadata": {},
             "data": {"quick_replies": [{"title": "A", "payload": "/a"}]}}
    assert cluster.rest_messages(quick, "c") == [{"recipient_id": "c", "text": "Choisissez",
                                                  "buttons": [{"title": "A", "payload": "/a"}]}]
    elements = {"event": "bot", "text": None, "metadata": {},
                "data": {"elements": [{"title": "T", "subtitle": "S", "buttons": []}]}}
    assert cluster.rest_messages(elements, "c") == [{"recipient_id": "c", "text": "T : S", "buttons": []}]


def test_replay_finds_only_the_last_user_turn():
    first = [{"event": "user", "text": "a", "metadata": {"turn_id": "k1"}}, *answer_of("a")]
    second = [{"event": "user", "text": "b", "metadata": {"turn_id": "k2"}}, {"event": "action", "name": "x"},
              *answer_of("b"), {"event": "action", "name": "action_listen"}]
    events = first + second
    assert cluster.replay(events, "k2", "c") == rest_output("c", answer_of("b"))
    assert cluster.replay(events, "k1", "c") is None  # an older turn with that id: not this request's
    assert cluster.replay(events, "k3", "c") is None
    assert cluster.replay([], "k1", "c") is None


# --------------------------------------------------------------------------- picking and failover
async def test_turns_are_spread_over_the_instances_and_least_busy_first(fakes):
    async with httpx.AsyncClient() as client:
        rasa = make_cluster(client, fakes.urls)
        for n in range(6):
            await rasa.turn(f"c-{n}", "bonjour", {}, uuid.uuid4().hex)
        assert [i.received for i in fakes.instances] == [3, 3]
        busy, idle = rasa.instances
        busy.in_flight = 3
        assert {rasa.pick().number for _ in range(4)} == {idle.number}


async def test_a_refused_connection_fails_over_and_the_instance_is_skipped_then_retried(fakes):
    fakes.call(fakes.instances[0].die())
    async with httpx.AsyncClient() as client:
        rasa = make_cluster(client, fakes.urls, retry_after_s=0.5)
        for n in range(4):
            reply = await rasa.turn(f"c-{n}", "bonjour", {}, f"t{n}")
            assert reply == rest_output(f"c-{n}", answer_of("bonjour"))
        assert fakes.instances[1].received == 4
        assert rasa.instances[0].down_until > time.monotonic()  # skipped: tried once only
        fakes.revive(0)
        await asyncio.sleep(0.6)
        for n in range(4):
            await rasa.turn(f"d-{n}", "bonjour", {}, f"u{n}")
        assert fakes.instances[0].received >= 1  # tried again after its pause


@pytest.mark.parametrize("mode", ["drop_after", "die_after", "zombie_after", "error_after", "slow"])
async def test_a_turn_that_ran_before_the_failure_is_not_run_again(fakes, mode):
    """The connection dropped (or the instance died, or 500, or read timeout) after Rasa ran the turn."""
    first = fakes.instances[0]
    first.mode, first.delay_s = mode, 1.0
    locks = RecordingRasaLocks()
    async with httpx.AsyncClient() as client:
        rasa = make_cluster(client, fakes.urls, timeout_s=0.4, rasa_locks=locks)
        rasa._turns = iter(range(0, 10**6, 2))  # noqa: SLF001 - start on instance 1
        reply = await rasa.turn("conv-1", "bonjour", {"language": "fr"}, "turn-1")
    assert reply == rest_output("conv-1", answer_of("bonjour"))
    assert fakes.shared.turns == [("rasa-1", "conv-1", "turn-1")]  # exactly once
    assert fakes.instances[1].received == 0
    assert fakes.shared.barriers == 1  # it waited for Rasa's conversation lock before reading the tracker
    dead = mode in ("die_after", "zombie_after")
    assert locks.cleared == (["conv-1"] if dead else [])  # a dead instance's lock is cleared


@pytest.mark.parametrize("mode", ["drop_before", "die_before", "error_before"])
async def test_a_turn_that_did_not_run_is_sent_again_elsewhere_once(fakes, mode):
    fakes.instances[0].mode = mode
    locks = RecordingRasaLocks()
    async with httpx.AsyncClient() as client:
        rasa = make_cluster(client, fakes.urls, rasa_locks=locks)
        rasa._turns = iter(range(0, 10**6, 2))  # noqa: SLF001
        reply = await rasa.turn("conv-2", "salut", {}, "turn-2")
    assert reply == rest_output("conv-2", answer_of("salut"))
    assert fakes.shared.turns == [("rasa-2", "conv-2", "turn-2")]
    assert fakes.shared.turn_ids("conv-2") == ["turn-2"]
    assert locks.cleared == (["conv-2"] if mode == "die_before" else [])


async def test_one_instance_failing_gives_unavailable_not_a_second_turn(fakes):
    fakes.instances[0].mode = "error_before"
    async with httpx.AsyncClient() as client:
        rasa = make_cluster(client, fakes.urls[:1])
        with pytest.raises(cluster.RasaUnavailable):
            await rasa.turn("conv-3", "salut", {}, "turn-3")
        fakes.instances[0].mode = "error_after"
        assert await rasa.turn("conv-4", "salut", {}, "turn-4") == rest_output("conv-4", answer_of("salut"))
    assert fakes.shared.turn_ids("conv-4") == ["turn-4"]


async def test_a_turn_abandoned_by_a_live_instance_is_sent_again_even_to_it(fakes):
    """Rasa cancels a turn whose client timed out: with one instance, the same one takes it again."""
    only = fakes.instances[0]
    only.next_modes, only.delay_s = ["cancelled"], 0.6
    async with httpx.AsyncClient() as client:
        rasa = make_cluster(client, fakes.urls[:1], timeout_s=0.3)
        reply = await rasa.turn("conv-6", "salut", {}, "turn-6")
    assert reply == rest_output("conv-6", answer_of("salut"))
    assert only.received == 2 and fakes.shared.turn_ids("conv-6") == ["turn-6"]


async def test_every_instance_down_is_unavailable(fakes):
    for instance in fakes.instances:
        fakes.call(instance.die())
    async with httpx.AsyncClient() as client:
        rasa = make_cluster(client, fakes.urls)
        with pytest.raises(cluster.RasaUnavailable):
            await rasa.turn("conv-5", "salut", {}, "turn-5")
        healthy, body = await cluster.health(rasa, fakes.urls)
    assert not healthy and body["rasa"] == [{"instance": 1, "up": False}, {"instance": 2, "up": False}]


async def test_redis_rasa_locks_clear_rasa_s_key_of_the_conversation(redis_url):
    import redis

    direct = redis.Redis.from_url(redis_url)
    direct.set("mydsp:lock:conv-x", b'{"conversation_id": "conv-x", "tickets": []}')
    direct.set("mydsp:lock:conv-y", b"{}")
    locks = cluster.RedisRasaLocks(redis_url, "mydsp")
    await locks.clear("conv-x")
    await locks.aclose()
    assert direct.get("mydsp:lock:conv-x") is None and direct.get("mydsp:lock:conv-y") is not None
    direct.delete("mydsp:lock:conv-y")
    direct.close()


# --------------------------------------------------------------------------- conversation locks in Redis
async def test_redis_lock_excludes_another_holder_and_times_out_with_a_localized_429(redis_url, sqlite_db):
    from fastapi import HTTPException

    from bot.gateway import store

    store.create_tables()
    store.save(store.ConversationState("lock-1", "de"))
    first = cluster.RedisConversationLocks(redis_url, lock_timeout_s=0.6, wait_s=0.8)  # renewed while held
    second = cluster.RedisConversationLocks(redis_url, lock_timeout_s=0.6, wait_s=0.8)
    order: list[str] = []

    async def hold_long() -> None:
        async with first.hold("lock-1"):
            order.append("first in")
            await asyncio.sleep(1.5)  # longer than the lock's timeout: renewal keeps it
            order.append("first out")

    task = asyncio.create_task(hold_long())
    await asyncio.sleep(0.1)
    with pytest.raises(HTTPException) as refused:
        async with second.hold("lock-1"):
            order.append("second in")
    assert refused.value.status_code == 429 and refused.value.headers == {"Retry-After": "2"}
    assert "vorherige Nachricht" in refused.value.detail  # in the conversation's language
    second.wait_s = 5
    async with second.hold("lock-1"):
        order.append("second in")
    await task
    assert order == ["first in", "first out", "second in"]
    async with first.hold("lock-2"), second.hold("lock-3"):  # other conversations do not wait
        pass
    await first.aclose()
    await second.aclose()


def test_redis_lock_is_shared_with_another_process(redis_url, sqlite_db):
    """A holder in another OS process (redis-py, the same key) makes this one wait."""
    script = (f"import redis, sys, time; r = redis.Redis.from_url({redis_url!r}); "
              "lock = r.lock('mydsp:gateway:turn:proc-1', timeout=10); assert lock.acquire(blocking=False); "
              "print('held', flush=True); time.sleep(1.2); lock.release()")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        locks = cluster.RedisConversationLocks(redis_url, lock_timeout_s=5, wait_s=10)

        async def take() -> float:
            started = time.monotonic()
            async with locks.hold("proc-1"):
                waited = time.monotonic() - started
            await locks.aclose()
            return waited

        assert asyncio.run(take()) > 0.8
    finally:
        holder.wait(timeout=10)


async def test_redis_down_gives_a_localized_503(sqlite_db):
    from fastapi import HTTPException

    locks = cluster.RedisConversationLocks(f"redis://127.0.0.1:{free_port()}/0", lock_timeout_s=5, wait_s=1)
    with pytest.raises(HTTPException) as refused:
        async with locks.hold("nobody"):
            pass
    assert refused.value.status_code == 503 and "indisponible" in refused.value.detail
    await locks.aclose()


# --------------------------------------------------------------------------- the Idempotency-Key store
def check_reply_store() -> None:
    from bot.gateway import replies, store

    store.create_tables()
    conversation = "idem-" + uuid.uuid4().hex[:6]
    assert replies.find(conversation, "k1") is None
    replies.keep(conversation, "k1", {"messages": [{"text": "Bonjour ✓"}], "language": "fr"})
    assert replies.find(conversation, "k1") == {"messages": [{"text": "Bonjour ✓"}], "language": "fr"}
    assert replies.find(conversation, "k2") is None and replies.find("other", "k1") is None
    tomorrow = datetime.now(UTC) + timedelta(hours=24, minutes=1)
    assert replies.find(conversation, "k1", now=tomorrow) is None  # kept 24 h only
    replies.keep(conversation, "old", {"messages": []}, now=datetime.now(UTC) - timedelta(hours=25))
    assert replies.count(conversation) == 2
    assert replies.purge() >= 1
    assert replies.count(conversation) == 1
    replies.keep(conversation, "k1", {"messages": [], "language": "de"})  # a reused key replaces the row
    assert replies.find(conversation, "k1") == {"messages": [], "language": "de"}


def test_reply_store_on_sqlite(sqlite_db):
    check_reply_store()


def test_reply_store_on_postgresql(postgres_url, tmp_path, monkeypatch):
    from bot.dsp.db import reset_engine
    from bot.dsp.settings import get_settings

    use_database(monkeypatch, tmp_path, postgres_url)
    try:
        check_reply_store()
    finally:
        reset_engine()
        get_settings.cache_clear()


# --------------------------------------------------------------------------- two gateway processes
@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_url, postgres_url) -> Iterator[tuple[str, dict[str, str], FakeRasaServers]]:
    """The real gateway, 2 uvicorn workers, on the fakes, Redis locks and PostgreSQL."""
    state = tmp_path_factory.mktemp("gw-state")
    with FakeRasaServers(2) as fakes:
        port = free_port()
        env = {**os.environ, "DSP_STATE_DIR": str(state), "DSP_DATABASE_URL": postgres_url,
               "GATEWAY_API_KEY": "gw-key", "RASA_AUTH_TOKEN": TOKEN, "RASA_URLS": ",".join(fakes.urls),
               "RASA_URL": fakes.urls[0], "ACTION_SERVER_URLS": ",".join(fakes.urls), "REDIS_URL": redis_url,
               "RASA_LOCK_STORE": "in_memory", "RASA_TIMEOUT_SECONDS": "5", "RASA_RETRY_AFTER_SECONDS": "30",
               "CONVERSATION_LOCK_WAIT_SECONDS": "3",
               "PYTHONUNBUFFERED": "1"}
        if (REPO / "bot" / "schema.py").exists():  # the production schema comes from the migrations
            subprocess.run([sys.executable, "-m", "bot.dsp.cli", "db", "upgrade"], env=env, cwd=REPO, check=True,
                           capture_output=True, timeout=300)
        log = open(state / "gateway.log", "wb")  # noqa: SIM115
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "bot.gateway.app:app", "--host", "127.0.0.1",
                                    "--port", str(port), "--workers", "2", "--no-access-log"], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, (state / "gateway.log").read_text()
                time.sleep(0.3)
            yield url, {"Authorization": "Bearer gw-key"}, fakes
        finally:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)
            log.close()


def post_many(url: str, headers: dict[str, str], bodies: list[tuple[str, dict, dict]]) -> list[httpx.Response]:
    """POST concurrently from several threads: (path, json, extra headers) each."""
    with httpx.Client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(client.post, url + path, json=body, headers={**headers, **extra})
                   for path, body, extra in bodies]
        return [f.result() for f in futures]


def test_a_retried_request_with_the_same_key_gets_the_first_reply_without_a_new_turn(gateway):
    url, headers, fakes = gateway
    path = "/v1/conversations/idem-a/messages"
    responses = post_many(url, headers, [(path, {"text": "bonjour tout le monde"}, {"Idempotency-Key": "key-1"})] * 4)
    assert {r.status_code for r in responses} == {200}
    assert len({r.text for r in responses}) == 1
    assert fakes.shared.turn_ids("idem-a") == ["key-1"]  # one turn, its id the client's key
    body = {"text": "bonjour tout le monde"}
    again = httpx.post(url + path, json=body, headers={**headers, "Idempotency-Key": "key-1"})
    assert again.json() == responses[0].json()
    new = httpx.post(url + path, json=body, headers={**headers, "Idempotency-Key": "key-2"})
    assert new.status_code == 200 and fakes.shared.turn_ids("idem-a") == ["key-1", "key-2"]
    assert "echo: bonjour tout le monde" in again.text


def test_turns_of_one_conversation_never_overlap_across_gateway_processes(gateway):
    url, headers, fakes = gateway
    fakes.shared.max_active = 0
    path = "/v1/conversations/serial-1/messages"
    responses = post_many(url, headers, [(path, {"text": f"message numero {n}"}, {}) for n in range(8)])
    assert [r.status_code for r in responses] == [200] * 8
    assert len(fakes.shared.turn_ids("serial-1")) == 8
    assert fakes.shared.max_active == 1


def test_the_gateway_fails_over_when_an_instance_dies_mid_turn(gateway):
    url, headers, fakes = gateway
    fakes.instances[0].mode = "die_after"  # the first turn it gets runs, then it is gone
    before = fakes.instances[0].received
    try:
        for n in range(4):
            response = httpx.post(url + f"/v1/conversations/fo-{n}/messages", json={"text": f"bonjour {n}"},
                                  headers={**headers, "Idempotency-Key": f"fo-{n}"}, timeout=60)
            assert response.status_code == 200, response.text
            assert fakes.shared.turn_ids(f"fo-{n}") == [f"fo-{n}"]  # ran once (rebuilt, or sent elsewhere)
            assert any(m["text"] == f"echo: bonjour {n}" for m in response.json()["messages"])
        # 4 turns over 2 workers, each alternating: instance 1 got one of them, ran it, and died
        assert fakes.instances[0].received - before == 1
        assert len([t for t in fakes.shared.turns if t[0] == "rasa-1" and t[1].startswith("fo-")]) == 1
        health = httpx.get(url + "/health")
        assert health.status_code == 200  # one Rasa is enough
        assert health.json()["rasa"] == [{"instance": 1, "up": False}, {"instance": 2, "up": True}]
    finally:
        fakes.revive(0)
    health = httpx.get(url + "/health")
    assert health.status_code == 200 and health.json()["rasa"][0]["up"] is True


def test_a_conversation_held_elsewhere_gets_a_localized_429_and_voice_speaks_it(gateway, redis_url):
    import redis

    url, headers, _ = gateway
    httpx.post(url + "/v1/conversations/busy-1/messages", json={"text": "Ich möchte mein Konto aktivieren"},
               headers=headers, timeout=60)
    holder = redis.Redis.from_url(redis_url).lock("mydsp:gateway:turn:busy-1", timeout=30)
    assert holder.acquire(blocking=False)  # another gateway process is running a turn of the conversation
    try:
        started = time.monotonic()
        busy = httpx.post(url + "/v1/conversations/busy-1/messages", json={"text": "hallo"}, headers=headers,
                          timeout=60)
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "2"
        assert "vorherige Nachricht" in busy.json()["messages"][0]["text"]
        assert 2.5 < time.monotonic() - started < 15  # waited CONVERSATION_LOCK_WAIT_SECONDS, then answered
        spoken = httpx.post(url + "/v1/voice/busy-1", json={"text": "hallo"}, headers=headers, timeout=60)
        assert spoken.status_code == 429 and "<speak" in spoken.json()["ssml"]
    finally:
        holder.release()
    assert httpx.post(url + "/v1/conversations/busy-1/messages", json={"text": "hallo"}, headers=headers,
                      timeout=60).status_code == 200


def test_idempotency_key_is_checked_and_documented(gateway):
    url, headers, _ = gateway
    bad = httpx.post(url + "/v1/conversations/idem-b/messages", json={"text": "bonjour"},
                     headers={**headers, "Idempotency-Key": "a b"})
    assert bad.status_code == 422
    spec = httpx.get(url + "/openapi.json").json()["paths"]
    for path in ("/v1/conversations/{conversation_id}/messages", "/v1/conversations/{conversation_id}/protected",
                 "/v1/conversations/{conversation_id}/files", "/v1/voice/{conversation_id}"):
        params = {p["name"]: p for p in spec[path]["post"].get("parameters", [])}
        assert "Idempotency-Key" in params and params["Idempotency-Key"]["in"] == "header", path
        assert "retry" in params["Idempotency-Key"]["description"]


# --------------------------------------------------------------------------- the launcher's layouts
RASA_PYTHON = REPO / ".venv-rasa" / "bin" / "python"
READ_ENDPOINTS = """
import json, sys
from rasa.core.lock_store import LockStore
from rasa.core.tracker_store import TrackerStore
from rasa.utils.endpoints import read_endpoint_config
tracker = TrackerStore.create(read_endpoint_config("endpoints.yml", "tracker_store"))
lock = LockStore.create(read_endpoint_config("endpoints.yml", "lock_store"))
ticket = lock.issue_ticket("endpoints-check", 5)
lock.cleanup("endpoints-check", ticket)
print(json.dumps({"tracker": tracker.engine.url.get_backend_name(), "database": tracker.engine.url.database,
                  "lock": type(lock).__name__, "prefix": getattr(lock, "key_prefix", None),
                  "action": read_endpoint_config("endpoints.yml", "action_endpoint").url}))
"""


def layout_env(monkeypatch, layout: str, extra: dict[str, str], **kwargs) -> tuple[object, dict[str, str]]:
    """A Services of `layout` and its environment (this process's environment restored afterwards)."""
    from bot.dsp.settings import get_settings
    from bot.launcher import Services

    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    services = Services(layout=layout, env=extra, telegram=False, **kwargs)
    env = services.environment()
    get_settings.cache_clear()
    return services, env


def rasa_reads_endpoints(env: dict[str, str]) -> dict[str, object]:
    """What Rasa 3.6 itself builds from endpoints.yml with `env` (its own loader, its own stores)."""
    import json

    done = subprocess.run([str(RASA_PYTHON), "-W", "ignore", "-c", READ_ENDPOINTS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_embedded_layout_is_unchanged_and_rasa_reads_its_endpoints(tmp_path, monkeypatch):
    services, env = layout_env(monkeypatch, "embedded", {"DSP_STATE_DIR": str(tmp_path), "RASA_AUTH_TOKEN": "tok"},
                               gateway_port=8100, rasa_port=5105, actions_port=5155)
    assert list(services.commands(env)) == ["actions", "rasa", "gateway"]
    assert services.rasa_urls == ["http://127.0.0.1:5105"] and services.gateway_workers == 1
    assert env["RASA_TRACKER_URL"] == f"sqlite:///{tmp_path.resolve()}/rasa/tracker.sqlite3"
    assert env["RASA_LOCK_STORE"] == "in_memory" and env["REDIS_URL"] == ""
    assert "--workers" not in services.commands(env)["gateway"][0]
    assert rasa_reads_endpoints(env) == {"tracker": "sqlite", "database": f"{tmp_path.resolve()}/rasa/tracker.sqlite3",
                                         "lock": "InMemoryLockStore", "prefix": None,
                                         "action": "http://127.0.0.1:5155/webhook"}


def test_prod_layout_environment_commands_and_endpoints(tmp_path, monkeypatch, postgres_url, redis_url):
    from sqlalchemy.engine import make_url

    from bot.infra.postgres import create_database

    create_database(postgres_url, "mydsp_rasa_check")
    tracker_url = make_url(postgres_url).set(drivername="postgresql", database="mydsp_rasa_check")
    services, env = layout_env(monkeypatch, "prod", {
        "DSP_STATE_DIR": str(tmp_path), "RASA_AUTH_TOKEN": "tok-secret-1", "DSP_DATABASE_URL": postgres_url,
        "RASA_TRACKER_URL": tracker_url.render_as_string(hide_password=False), "REDIS_URL": redis_url,
    }, gateway_port=8100, rasa_ports=[5105, 5106], actions_ports=[5155, 5156])
    commands = services.commands(env)
    assert list(commands) == ["actions-1", "actions-2", "rasa-1", "rasa-2", "gateway"]
    assert commands["rasa-2"][1]["RASA_ACTION_ENDPOINT"] == "http://127.0.0.1:5156/webhook"
    assert commands["gateway"][0][-2:] == ["--workers", "2"]
    assert env["RASA_URLS"] == "http://127.0.0.1:5105,http://127.0.0.1:5106"
    assert env["RASA_LOCK_STORE"] == "redis" and env["TICKET_LOCK_LIFETIME"] == "30"
    password = make_url(postgres_url).password
    for command, _ in commands.values():  # no secret on a command line (ps shows them)
        assert not any(secret in " ".join(command) for secret in (password, "tok-secret-1"))
    seen = rasa_reads_endpoints(commands["rasa-1"][1])
    assert seen == {"tracker": "postgresql", "database": "mydsp_rasa_check", "lock": "RedisLockStore",
                    "prefix": "mydsp:lock:", "action": "http://127.0.0.1:5155/webhook"}


def test_prod_layout_defaults_generate_the_password_once(tmp_path, monkeypatch):
    for key in ("DSP_DATABASE_URL", "RASA_TRACKER_URL", "REDIS_URL"):
        monkeypatch.delenv(key, raising=False)
    _, env = layout_env(monkeypatch, "prod", {"DSP_STATE_DIR": str(tmp_path), "RASA_AUTH_TOKEN": "tok"})
    password = (tmp_path / "postgres-password").read_text().strip()
    assert oct((tmp_path / "postgres-password").stat().st_mode & 0o777) == "0o600"
    assert env["DSP_DATABASE_URL"] == f"postgresql+psycopg://mydsp:{password}@127.0.0.1:5433/mydsp"
    assert env["RASA_TRACKER_URL"] == f"postgresql://mydsp:{password}@127.0.0.1:5433/mydsp_rasa"
    assert env["REDIS_URL"] == "redis://127.0.0.1:6380/0"
    lock_store = (env["RASA_LOCK_REDIS_HOST"], env["RASA_LOCK_REDIS_PORT"], env["RASA_LOCK_REDIS_DB"])
    assert lock_store == ("127.0.0.1", "6380", "0")
    _, again = layout_env(monkeypatch, "prod", {"DSP_STATE_DIR": str(tmp_path), "RASA_AUTH_TOKEN": "tok"})
    assert again["DSP_DATABASE_URL"] == env["DSP_DATABASE_URL"]
    with pytest.raises(RuntimeError, match="PostgreSQL"):
        layout_env(monkeypatch, "prod", {"DSP_STATE_DIR": str(tmp_path), "DSP_DATABASE_URL": "sqlite:///x.db"})


def test_ensure_redis_answers_none_when_one_is_there_and_explains_a_missing_binary(redis_url, tmp_path, monkeypatch):
    from bot.infra import redis as infra

    assert infra.ensure_redis(redis_url, tmp_path) is None  # already there: nothing started
    monkeypatch.setattr(infra, "REDIS_SERVER", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="make prod-deps"):
        infra.ensure_redis(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    with pytest.raises(RuntimeError, match="loopback"):
        infra.ensure_redis("redis://10.255.255.1:6379/0", tmp_path)
