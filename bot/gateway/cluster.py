"""Several Rasa instances behind the gateway, each user turn run exactly once, locks across processes.

- `RasaCluster` spreads the turns over the Rasa instances of RASA_URLS (the least busy, in turn),
  fails over on connection errors and skips a failed instance for `rasa_retry_after_s` seconds.
- Exactly once: every turn carries an id in the REST message's metadata (`metadata.turn_id`, kept
  by Rasa in the UserUttered event). When a request failed where Rasa may have run the turn
  (connection dropped after sending, read timeout, 5xx), the gateway waits until no Rasa holds the
  conversation any more, reads its tracker, and either rebuilds the reply from the bot events after
  that user event (exactly what the REST channel would have answered) or sends the turn again.
- `RedisConversationLocks`: the conversation lock shared by every gateway process (REDIS_URL).
- `turn_guard`: the conversation lock and the `Idempotency-Key` of one request (`bot.gateway.replies`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import httpx
from fastapi import Header, HTTPException, status

from bot.gateway import messages, replies, store
from bot.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from pydantic import BaseModel

logger = logging.getLogger("bot.gateway.cluster")

#: Key of the turn id in the metadata of the REST channel's message (and of Rasa's UserUttered event).
TURN_ID_KEY = "turn_id"
#: Seconds to wait for a probe of a Rasa instance (is its process still there?).
PROBE_TIMEOUT_S = 3.0
#: Seconds an idle connection to Rasa is kept: below Sanic's keep-alive timeout (5 s), so that the
#: gateway does not send a turn on a connection Rasa is closing.
KEEPALIVE_EXPIRY_S = 2.0
#: Allowed `Idempotency-Key` values: visible ASCII, 1 to 200 characters.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN,
    description="Optional, unique per request (e.g. a UUID): a retry of a request with the same key in the same "
                "conversation gets the first reply again instead of a second turn (kept 24 h). While the first "
                "is still running, the retry waits for it. Visible ASCII, up to 200 characters.")]


class RasaUnavailable(httpx.HTTPError):
    """No Rasa instance could run the turn (or say whether it ran): the gateway answers 503."""


class NotSent(Exception):
    """The request never reached Rasa (connection refused, connect timeout): safe to send elsewhere."""


class TrackerUnread(Exception):
    """The instance asked for a conversation's tracker did not answer."""


class MaybeProcessed(Exception):
    """Rasa may have run the turn (connection dropped after sending, read timeout, 5xx)."""

    def __init__(self, reason: str, instance_failed: bool) -> None:
        super().__init__(reason)
        self.instance_failed = instance_failed


# --------------------------------------------------------------------------- replies from the tracker
def _collected(recipient_id: str, text: Any = None, image: Any = None, buttons: Any = None, attachment: Any = None,
               custom: Any = None) -> dict[str, Any]:
    """One message as Rasa's CollectingOutputChannel stores it (None values left out)."""
    obj = {"recipient_id": recipient_id, "text": text, "image": image, "buttons": buttons, "attachment": attachment,
           "custom": custom}
    return {key: value for key, value in obj.items() if value is not None}


def rest_messages(event: Mapping[str, Any], recipient_id: str) -> list[dict[str, Any]]:
    """Return what Rasa's REST channel answered for one "bot" event of a tracker.

    A port of Rasa 3.6's `BotUttered.message()`, `OutputChannel.send_response()` and
    `CollectingOutputChannel`: text split on blank lines (unless it has buttons), then the custom
    payload, the image, the attachment and the elements, each as its own message.
    """
    message: dict[str, Any] = dict(event.get("data") or {})
    message["text"] = event.get("text")
    message["timestamp"] = event.get("timestamp")
    message.update(event.get("metadata") or {})
    if message.get("image") == message.get("attachment"):
        message["attachment"] = None
    out: list[dict[str, Any]] = []
    if message.get("quick_replies"):
        out.append(_collected(recipient_id, text=message.pop("text"), buttons=message.pop("quick_replies")))
    elif message.get("buttons"):
        out.append(_collected(recipient_id, text=message.pop("text"), buttons=message.pop("buttons")))
    elif message.get("text"):
        out += [_collected(recipient_id, text=part) for part in str(message.pop("text")).strip().split("\n\n")]
    if message.get("custom"):
        out.append(_collected(recipient_id, custom=message.pop("custom")))
    if message.get("image"):
        out.append(_collected(recipient_id, image=message.pop("image")))
    if message.get("attachment"):
        out.append(_collected(recipient_id, attachment=message.pop("attachment")))
    for element in message.pop("elements", None) or []:
        out.append(_collected(recipient_id, text=f"{element.get('title', '')} : {element.get('subtitle', '')}",
                              buttons=element.get("buttons", [])))
    return out


def replay(events: list[Mapping[str, Any]], turn_id: str, recipient_id: str) -> list[dict[str, Any]] | None:
    """Return the REST channel's answer to the turn `turn_id`, rebuilt from a tracker's events.

    The turn counts as run only when the conversation's last user event carries `turn_id` (the
    gateway holds the conversation's lock, so no later turn can exist). Returns None when it was
    not run: the turn must be sent again.
    """
    last_user = max((i for i, e in enumerate(events) if e.get("event") == "user"), default=None)
    if last_user is None or (events[last_user].get("metadata") or {}).get(TURN_ID_KEY) != turn_id:
        return None
    out: list[dict[str, Any]] = []
    for event in events[last_user + 1:]:
        if event.get("event") == "bot":
            out += rest_messages(event, recipient_id)
    return out


# --------------------------------------------------------------------------- Rasa instances
@dataclass
class Settled:
    """What the tracker said about a turn after an ambiguous failure.

    Attributes:
        ran: the turn is in the tracker (`reply` rebuilt from it); else it must be sent again.
        reply: the REST channel's messages of the turn (empty when it did not run).
        failed_alive: the instance that failed still answers (it may take the turn again).
    """

    ran: bool
    reply: list[dict[str, Any]]
    failed_alive: bool


@dataclass(eq=False)
class Instance:
    """One Rasa server as the gateway process sees it.

    Attributes:
        url: base URL.
        number: 1-based position in RASA_URLS (named so in /health, never by URL).
        in_flight: turns sent to it and not answered yet (this process).
        down_until: `time.monotonic()` before which it is skipped (0: up).
        failing: it failed and has not answered since (its failures are logged once).
    """

    url: str
    number: int
    in_flight: int = 0
    down_until: float = 0.0
    failing: bool = False

    def answered(self) -> None:
        """Mark the instance up (it answered)."""
        if self.failing:
            logger.info("Rasa instance %d answers again", self.number)
        self.down_until, self.failing = 0.0, False


class RasaLockView(Protocol):
    """What the cluster needs of Rasa's lock store: clearing a conversation's lock."""

    async def clear(self, conversation_id: str) -> None:
        """Delete the conversation's lock (its holder is dead)."""

    async def aclose(self) -> None:
        """Release the connection."""


class RedisRasaLocks:
    """Rasa's Redis lock store, seen from the gateway: `<prefix>:lock:<conversation id>` (Rasa 3.6 keys).

    A Rasa instance killed mid-turn leaves its ticket there until it expires (TICKET_LOCK_LIFETIME,
    60 s by default); the gateway, which holds the conversation's own lock and knows the holder is
    dead, deletes it so that the other instance does not wait.
    """

    def __init__(self, url: str, key_prefix: str) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        self.prefix = f"{key_prefix}:lock:"

    async def clear(self, conversation_id: str) -> None:
        """Delete the conversation's Rasa lock (best effort: an error only costs the ticket's lifetime)."""
        from redis.exceptions import RedisError

        try:
            await self.redis.delete(self.prefix + conversation_id)
        except RedisError as exc:
            logger.warning("could not clear Rasa's lock of a conversation: %s", type(exc).__name__)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()


@dataclass
class RasaCluster:
    """The Rasa instances of RASA_URLS, used by one gateway process.

    Attributes:
        urls: base URL of each instance.
        token: Rasa's HTTP API token (tracker reads, status).
        client: HTTP client of the turns, tracker reads and health checks.
        timeout_s: seconds to wait for one turn (RASA_TIMEOUT_SECONDS).
        retry_after_s: seconds a failed instance is skipped.
        rasa_locks: Rasa's lock store when it is shared in Redis (None: in-memory, one instance).
        owns_client: `aclose()` closes `client` too.
    """

    urls: tuple[str, ...]
    token: str
    client: httpx.AsyncClient
    timeout_s: float = 60.0
    retry_after_s: float = 5.0
    rasa_locks: RasaLockView | None = None
    owns_client: bool = False
    instances: list[Instance] = field(init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("at least one Rasa URL is needed")
        self.instances = [Instance(url.rstrip("/"), n) for n, url in enumerate(self.urls, start=1)]
        self._turns = itertools.count()
        # Probes open a new connection each: a pooled one that Rasa just closed must not look like a death.
        self.probe_client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> RasaCluster:
        """Build the cluster of RASA_URLS (with Rasa's Redis lock store when RASA_LOCK_STORE is redis)."""
        locks = (RedisRasaLocks(settings.rasa_lock_redis_url, settings.rasa_lock_key_prefix)
                 if settings.rasa_lock_redis_url else None)
        client = httpx.AsyncClient(timeout=settings.rasa_timeout_s,
                                   limits=httpx.Limits(max_connections=200, max_keepalive_connections=40,
                                                       keepalive_expiry=KEEPALIVE_EXPIRY_S))
        return cls(settings.rasa_urls or (settings.rasa_url,), settings.rasa_token, client, settings.rasa_timeout_s,
                   settings.rasa_retry_after_s, locks, owns_client=True)

    async def aclose(self) -> None:
        """Close the probe client, the turns' client if owned, and the Redis connection of Rasa's lock store."""
        await self.probe_client.aclose()
        if self.owns_client:
            await self.client.aclose()
        if self.rasa_locks is not None:
            await self.rasa_locks.aclose()

    # ----------------------------------------------------------------- choosing
    def pick(self, exclude: Iterable[Instance] = ()) -> Instance | None:
        """Return the instance for the next request: up, least busy, in turn; None when all are excluded.

        When every candidate is down, the one whose pause ends first is tried anyway (it may be back).
        """
        excluded = set(exclude)
        candidates = [i for i in self.instances if i not in excluded]
        if not candidates:
            return None
        now = time.monotonic()
        pool = [i for i in candidates if i.down_until <= now] or [min(candidates, key=lambda i: i.down_until)]
        start = next(self._turns) % len(pool)
        rotated = pool[start:] + pool[:start]
        return min(rotated, key=lambda i: i.in_flight)

    def mark_down(self, instance: Instance) -> None:
        """Skip `instance` for `retry_after_s` seconds (logged when it starts failing, not at each retry)."""
        if not instance.failing:
            logger.warning("Rasa instance %d failed: skipped, tried again every %.0f s", instance.number,
                           self.retry_after_s)
        instance.failing = True
        instance.down_until = time.monotonic() + self.retry_after_s

    # ----------------------------------------------------------------- one turn
    async def turn(self, conversation_id: str, message: str, metadata: Mapping[str, Any],
                   turn_id: str) -> list[dict[str, Any]]:
        """Run one user turn exactly once on some instance; return the REST channel's messages.

        Args:
            conversation_id: Rasa's sender id.
            message: the text (or /intent{...}) for Rasa.
            metadata: the message's metadata (the turn id is added).
            turn_id: unique per turn in the conversation.

        Raises:
            RasaUnavailable: no instance ran the turn, or whether one did could not be known.
            httpx.HTTPStatusError: Rasa refused the message (4xx).
        """
        body = {"sender": conversation_id, "message": message, "metadata": {**metadata, TURN_ID_KEY: turn_id}}
        tried: list[Instance] = []
        again: Instance | None = None  # a live instance where the turn provably did not run
        for _attempt in range(len(self.instances) + 1):
            instance = self.pick(tried) or again  # another instance first
            if instance is None:
                break
            tried.append(instance)
            again = None
            try:
                return await self._send(instance, body)
            except NotSent:
                self.mark_down(instance)
                continue
            except MaybeProcessed as exc:
                if exc.instance_failed:
                    self.mark_down(instance)
                logger.warning("Rasa instance %d: %s; checking whether it ran the turn", instance.number, exc)
                settled = await self.settle(conversation_id, turn_id, instance)
                if settled.ran:
                    logger.info("the turn had run: its reply was rebuilt from the tracker")
                    return settled.reply
                logger.info("the turn had not run: sent again")
                if settled.failed_alive:  # e.g. Rasa cancels a turn whose client timed out
                    again = instance
        raise RasaUnavailable("no Rasa instance could run the turn")

    async def _send(self, instance: Instance, body: dict[str, Any]) -> list[dict[str, Any]]:
        """POST the message to one instance's REST channel.

        Raises:
            NotSent: the request never reached it.
            MaybeProcessed: it may have run the turn.
            httpx.HTTPStatusError: 4xx.
        """
        instance.in_flight += 1
        try:
            response = await self.client.post(f"{instance.url}/webhooks/rest/webhook", json=body,
                                              timeout=self.timeout_s)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NotSent(type(exc).__name__) from None
        except httpx.TransportError as exc:  # read timeout, connection dropped, protocol error
            raise MaybeProcessed(type(exc).__name__, instance_failed=True) from None
        finally:
            instance.in_flight -= 1
        if response.status_code >= 500:
            raise MaybeProcessed(f"HTTP {response.status_code}", instance_failed=False)
        response.raise_for_status()
        instance.answered()
        try:
            result = response.json()
        except ValueError:
            raise MaybeProcessed("a reply that is not JSON", instance_failed=False) from None
        return result if isinstance(result, list) else []

    async def settle(self, conversation_id: str, turn_id: str, failed: Instance) -> Settled:
        """After an ambiguous failure: whether the turn ran, and its reply if it did (else: send it again).

        Waits until no Rasa instance holds the conversation (Rasa's own lock: a request to append no
        event is answered only once the lock is free), then reads the tracker (`replay`). The failed
        instance is asked first (with an in-memory lock store only it knows its lock); when it is
        gone, its lock is deleted (Redis lock store) and another instance is asked.

        Raises:
            RasaUnavailable: no instance answers, or the tracker could not be read.
        """
        gone: list[Instance] = []
        reader: Instance | None = failed
        for attempt in range(2 * len(self.instances) + 1):
            if reader is None:
                break
            if not await self.alive(reader):
                self.mark_down(reader)
                gone.append(reader)
                if reader is failed and self.rasa_locks is not None:
                    await self.rasa_locks.clear(conversation_id)  # the dead holder's ticket
                reader = await self._live_instance(exclude=gone)
                continue
            try:
                reply = await self._read_turn(reader, conversation_id, turn_id)
            except TrackerUnread:
                pass
            else:
                return Settled(reply is not None, reply or [], failed_alive=failed not in gone)
            await asyncio.sleep(min(0.2 * (attempt + 1), 1.0))  # then probe it again: it may be dying
        logger.error("could not tell whether a turn ran: no Rasa instance answered")
        raise RasaUnavailable("no Rasa instance answers: cannot tell whether the turn ran")

    async def _read_turn(self, reader: Instance, conversation_id: str, turn_id: str) -> list[dict[str, Any]] | None:
        """Wait for the conversation's Rasa lock on `reader`, then look for the turn in the tracker.

        Returns:
            The turn's reply (see `replay`), or None when it did not run.

        Raises:
            TrackerUnread: `reader` did not answer.
        """
        params = {"token": self.token}
        url = f"{reader.url}/conversations/{conversation_id}/tracker"
        try:
            # The barrier: Rasa takes the conversation's lock for it, then refuses the empty list of
            # events (an error status, and a warning in Rasa's log): whatever the answer, it comes once
            # no instance runs a turn of the conversation any more.
            await self.client.post(f"{url}/events", params=params, json=[], timeout=self.timeout_s + 15)
            response = await self.client.get(url, params={**params, "include_events": "ALL"},
                                             timeout=self.timeout_s + 15)
            response.raise_for_status()
            events = response.json().get("events") or []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            logger.warning("Rasa instance %d: tracker not read (%s)", reader.number, type(exc).__name__)
            raise TrackerUnread from None
        return replay(events, turn_id, conversation_id)

    async def alive(self, instance: Instance) -> bool:
        """Return False when the instance's process is gone (or going): refused, or closed without an answer.

        A response of any status, or no answer in time (a busy instance), counts as alive: it may
        still be running the turn. Each probe opens a new connection.
        """
        try:
            await self.probe_client.get(f"{instance.url}/status", params={"token": self.token},
                                        timeout=PROBE_TIMEOUT_S)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            return False
        except httpx.HTTPError:
            return True  # a timeout: there, but slow; it may still be running the turn
        return True

    async def _live_instance(self, exclude: list[Instance]) -> Instance | None:
        """Return an instance that answers, trying each once (up ones first)."""
        tried = list(exclude)
        while (candidate := self.pick(tried)) is not None:
            tried.append(candidate)
            if await self.alive(candidate):
                return candidate
            self.mark_down(candidate)
        return None

    # ----------------------------------------------------------------- health
    async def model_loaded(self, instance: Instance) -> bool:
        """Return True when the instance answers /status with a model (an instance that does is marked up)."""
        try:
            response = await self.client.get(f"{instance.url}/status", params={"token": self.token}, timeout=5)
            data = response.json() if response.status_code == 200 else {}
            ok = bool(data.get("model_id") or data.get("model_file"))
        except (httpx.HTTPError, ValueError, AttributeError):
            ok = False
        if ok:
            instance.answered()  # back: no need to wait for its pause to end
        return ok


async def action_server_up(client: httpx.AsyncClient, url: str) -> bool:
    """Return True when the action server at `url` answers its /health with 200."""
    try:
        return (await client.get(f"{url}/health", timeout=5)).status_code == 200
    except httpx.HTTPError:
        return False


async def health(cluster: RasaCluster, action_server_urls: Iterable[str]) -> tuple[bool, dict[str, Any]]:
    """Check every Rasa instance and action server at once.

    Returns:
        (healthy, body): healthy while at least one Rasa instance has its model and one action
        server answers. The body keeps the foundation's keys (`status`, `rasa_model`,
        `action_server`) and adds `rasa` and `actions`: [{"instance": n, "up": bool}] in
        RASA_URLS / ACTION_SERVER_URLS order (no URL: /health is public).
    """
    urls = list(action_server_urls)
    results = await asyncio.gather(*(cluster.model_loaded(i) for i in cluster.instances),
                                   *(action_server_up(cluster.client, url) for url in urls))
    rasa, actions = list(results[:len(cluster.instances)]), list(results[len(cluster.instances):])
    healthy = any(rasa) and any(actions)
    return healthy, {"status": "ok" if healthy else "unavailable", "rasa_model": any(rasa),
                     "action_server": any(actions),
                     "rasa": [{"instance": n, "up": up} for n, up in enumerate(rasa, start=1)],
                     "actions": [{"instance": n, "up": up} for n, up in enumerate(actions, start=1)]}


# --------------------------------------------------------------------------- conversation locks
async def _language(conversation_id: str) -> str | None:
    """Return the conversation's language for an error message (None when it cannot be read)."""
    try:
        return (await asyncio.to_thread(store.load, conversation_id)).language
    except Exception:  # noqa: BLE001 - the database may be what fails: the message is then in French
        return None


class RedisConversationLocks:
    """One Redis lock per conversation, shared by every gateway process, so its turns run one at a time.

    The lock expires after `lock_timeout_s` (longer than a Rasa turn) if its holder dies, and is
    renewed every third of that while held; a request that waits more than `wait_s` seconds gets
    a localized 429 (Retry-After); Redis unreachable gives a localized 503.
    """

    def __init__(self, url: str, lock_timeout_s: float, wait_s: float, prefix: str = "mydsp:gateway:turn:") -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        self.lock_timeout_s = lock_timeout_s
        self.wait_s = wait_s
        self.prefix = prefix

    @asynccontextmanager
    async def hold(self, conversation_id: str) -> AsyncIterator[None]:
        """Hold the conversation's lock for the block.

        Raises:
            HTTPException: 429 when another request of the conversation held it for `wait_s`
                seconds, 503 when Redis does not answer (both with the message in the
                conversation's language).
        """
        from redis.exceptions import LockError, RedisError

        lock = self.redis.lock(self.prefix + conversation_id, timeout=self.lock_timeout_s, sleep=0.05,
                               blocking=True, blocking_timeout=self.wait_s, thread_local=False)
        try:
            acquired = await lock.acquire()
        except RedisError as exc:
            logger.error("conversation lock unavailable: %s", type(exc).__name__)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                messages.text("unavailable", await _language(conversation_id))) from None
        if not acquired:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                messages.text("busy", await _language(conversation_id)), headers={"Retry-After": "2"})
        renewal = asyncio.create_task(self._renew(lock))
        try:
            yield
        finally:
            renewal.cancel()
            try:
                await lock.release()
            except (LockError, RedisError) as exc:  # expired meanwhile (Redis was away): nothing to release
                logger.warning("conversation lock not released: %s", type(exc).__name__)

    async def _renew(self, lock: Any) -> None:
        """Reset the lock's expiry every third of its timeout while the block runs."""
        from redis.exceptions import LockError, RedisError

        while True:
            await asyncio.sleep(self.lock_timeout_s / 3)
            try:
                await lock.reacquire()
            except (LockError, RedisError) as exc:
                logger.warning("conversation lock not renewed: %s", type(exc).__name__)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()


def make_locks(settings: GatewaySettings, in_process: Any) -> Any:
    """Return the conversation locks: Redis ones when REDIS_URL is set, else `in_process()`.

    Args:
        settings: the gateway's settings (redis_url, rasa_timeout_s, conversation_lock_wait_s).
        in_process: factory of the one-process locks (`app.ConversationLocks`).
    """
    if not settings.redis_url:
        return in_process()
    return RedisConversationLocks(settings.redis_url, lock_timeout_s=settings.rasa_timeout_s + 30,
                                  wait_s=settings.conversation_lock_wait_s)


# --------------------------------------------------------------------------- one request's turn
@dataclass
class TurnGuard:
    """One request holding its conversation's lock.

    Attributes:
        key: the request's Idempotency-Key, or None.
        stored: the reply body stored for that key by an earlier request, or None.
        reply: the reply to store when the block ends (set by `keep`).
    """

    key: str | None
    stored: dict[str, Any] | None = None
    reply: BaseModel | None = None
    turns: int = 0

    def keep(self, reply: BaseModel) -> Any:
        """Remember `reply` to store under the key when the block ends; return it."""
        self.reply = reply
        return reply

    def next_turn_id(self) -> str:
        """Return the id of the request's next Rasa turn: the key (then key#2…), else a random one."""
        self.turns += 1
        if self.key is None:
            return uuid.uuid4().hex
        return self.key if self.turns == 1 else f"{self.key}#{self.turns}"


_guard: ContextVar[TurnGuard | None] = ContextVar("turn_guard", default=None)


def next_turn_id() -> str:
    """Return the id of the next Rasa turn of the current request (random outside `turn_guard`)."""
    guard = _guard.get()
    return guard.next_turn_id() if guard is not None else uuid.uuid4().hex


@asynccontextmanager
async def turn_guard(locks: Any, conversation_id: str, key: str | None) -> AsyncIterator[TurnGuard]:
    """Hold the conversation's lock; with an Idempotency-Key, find the stored reply and store the new one.

    Use: `if guard.stored is not None: return Model.model_validate(guard.stored)`, then
    `return guard.keep(reply)`. Only a completed reply is stored (an error is not: a retry runs).
    """
    async with locks.hold(conversation_id):
        guard = TurnGuard(key)
        if key is not None:
            guard.stored = await asyncio.to_thread(replies.find, conversation_id, key)
        token = _guard.set(guard)
        try:
            yield guard
        finally:
            _guard.reset(token)
        if key is not None and guard.stored is None and guard.reply is not None:
            await asyncio.to_thread(replies.keep, conversation_id, key, guard.reply.model_dump(mode="json"))
