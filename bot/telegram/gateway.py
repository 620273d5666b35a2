"""Client of the gateway's HTTP API, used by the handlers (the contract of bot/gateway/app.py).

Retries never repeat an action: a POST is sent again only when it never left (connection refused,
connect or pool timeout); a GET of a download or image is idempotent and is retried on any
transport error. The outbox long-poll (`outbox`) is never retried here: its caller polls again.
Nothing here logs a message text, a secret or a file's content.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

logger = logging.getLogger("bot.telegram.gateway")

#: Errors raised before the request was sent: retrying cannot do an action twice.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Reply paths the bot fetches with its bearer key (never another host).
FETCHABLE_PREFIX = "/v1/conversations/"
#: Seconds the HTTP client waits beyond the long-poll's own wait before giving up.
OUTBOX_GRACE_S = 15.0


class GatewayUnavailable(Exception):
    """The gateway could not be reached, failed, or refused the bot's key."""


@dataclass
class Reply:
    """What the gateway answered to one turn.

    Attributes:
        messages: the assistant's messages (dicts of the contract: text, buttons, image, file…).
        language: the conversation's language after the turn (fr, de, en) when the gateway said it.
        status: HTTP status (200, or 409 / 413 / 422 with messages that explain the refusal).
        upload: for a file, what happened to it (accepted, error, format, size_bytes).
        handoff: the conversation's open helpdesk ticket, `{"reference", "status", "agent"}`, or None.
            While its status is "claimed" an agent answers: `messages` of a turn is then empty (the text
            went to the agent) and the agent's messages come through the outbox.
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    language: str | None = None
    status: int = 200
    upload: dict[str, Any] | None = None
    handoff: dict[str, Any] | None = None


@dataclass
class OutboxItem:
    """Messages for one conversation that arrived between turns (a helpdesk agent's, or notices).

    Attributes:
        conversation_id: the gateway conversation ("tg-<chat_id>" for the bot's chats).
        reply: its messages, language and handoff, in the shape of a turn's reply (status 200).
    """

    conversation_id: str
    reply: Reply


class GatewayClient:
    """One httpx.AsyncClient to the gateway, with the bearer key, shared by all chats."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 120.0, connect_retries: int = 3,
                 retry_delay_s: float = 0.5, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=5.0), transport=transport,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))
        self.connect_retries = connect_retries
        self.retry_delay_s = retry_delay_s

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    @staticmethod
    def conversation_id(chat_id: int) -> str:
        """Return the gateway conversation of a Telegram chat."""
        return f"tg-{chat_id}"

    async def send_text(self, conversation: str, text: str, language: str | None = None) -> Reply:
        """Send the user's free text."""
        body: dict[str, Any] = {"text": text}
        if language:
            body["language"] = language
        return await self._post(f"/v1/conversations/{conversation}/messages", json=body)

    async def choose(self, conversation: str, payload: str, language: str | None = None) -> Reply:
        """Send the payload of an offered button (the gateway answers 409 when it was not offered)."""
        body: dict[str, Any] = {"payload": payload}
        if language:
            body["language"] = language
        return await self._post(f"/v1/conversations/{conversation}/messages", json=body)

    async def send_protected(self, conversation: str, value: str, kind: str | None) -> Reply:
        """Answer the pending protected-input request (409 when nothing, or another kind, is pending)."""
        body: dict[str, Any] = {"value": value}
        if kind:
            body["kind"] = kind
        return await self._post(f"/v1/conversations/{conversation}/protected", json=body)

    async def send_file(self, conversation: str, name: str, data: bytes, mime_type: str | None,
                        language: str | None = None) -> Reply:
        """Send a file for the record (multipart `file`); the reply's `upload` says what happened."""
        files = {"file": (name, data, mime_type or "application/octet-stream")}
        return await self._post(f"/v1/conversations/{conversation}/files", files=files,
                                data={"language": language} if language else None)

    async def fetch(self, url: str) -> bytes:
        """Fetch a document or image offered in a reply (`file.url` or `image`), in memory.

        Raises:
            GatewayUnavailable: the link is not a gateway path, expired, or the gateway failed.
        """
        if not url.startswith(FETCHABLE_PREFIX):
            raise GatewayUnavailable("not a gateway link")
        for attempt in range(self.connect_retries + 1):
            try:
                response = await self._client.get(url)
            except httpx.TransportError as exc:  # a GET is idempotent
                if attempt == self.connect_retries:
                    raise GatewayUnavailable(type(exc).__name__) from None
                logger.warning("gateway download failed (%s): retrying", type(exc).__name__)
                await asyncio.sleep(self.retry_delay_s * 2**attempt)
                continue
            if response.status_code != 200:
                raise GatewayUnavailable(f"download answered {response.status_code}")
            return response.content
        raise GatewayUnavailable("unreachable")  # pragma: no cover - the loop returns or raises

    async def outbox(self, prefix: str = "tg-", wait_s: float = 20.0) -> list[OutboxItem]:
        """Long-poll `GET /v1/outbox?prefix=&wait=`: the waiting messages of every conversation of the prefix.

        The gateway answers as soon as there is one (or with none after `wait_s` seconds) and returns
        each message once: the caller must deliver them, it will not get them again. Not retried here.

        Returns:
            One item per conversation that has messages, in the gateway's order (may be empty).

        Raises:
            GatewayUnavailable: not reached, timed out, refused the key, or answered something else
                than 200 with `{"conversations": [...]}`.
        """
        try:
            response = await self._client.get("/v1/outbox", params={"prefix": prefix, "wait": wait_s},
                                              timeout=httpx.Timeout(wait_s + OUTBOX_GRACE_S, connect=5.0))
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(type(exc).__name__) from None
        body = GatewayClient._body(response)
        conversations = body.get("conversations")
        if response.status_code != 200 or not isinstance(conversations, list):
            raise GatewayUnavailable(f"outbox answered {response.status_code}")
        items = []
        for entry in conversations:
            if not isinstance(entry, dict) or not isinstance(entry.get("conversation_id"), str):
                continue
            items.append(OutboxItem(entry["conversation_id"], self._parse(entry, 200)))
        return items

    async def _post(self, path: str, **kwargs: Any) -> Reply:
        for attempt in range(self.connect_retries + 1):
            try:
                response = await self._client.post(path, **kwargs)
            except NOT_SENT as exc:
                if attempt == self.connect_retries:
                    raise GatewayUnavailable(type(exc).__name__) from None
                logger.warning("gateway not reached (%s): retrying", type(exc).__name__)
                await asyncio.sleep(self.retry_delay_s * 2**attempt)
                continue
            except httpx.HTTPError as exc:
                # The gateway may have acted (e.g. a read timeout): never sent twice.
                logger.error("gateway call failed: %s", type(exc).__name__)
                raise GatewayUnavailable(type(exc).__name__) from None
            return self._reply(response)
        raise GatewayUnavailable("unreachable")  # pragma: no cover - the loop returns or raises

    @staticmethod
    def _reply(response: httpx.Response) -> Reply:
        body = GatewayClient._body(response)
        messages = body.get("messages")
        if response.status_code >= 500 or not isinstance(messages, list):
            logger.error("gateway answered %s", response.status_code)
            raise GatewayUnavailable(f"status {response.status_code}")
        return GatewayClient._parse(body, response.status_code)

    @staticmethod
    def _body(response: httpx.Response) -> dict[str, Any]:
        """Return the JSON object of a gateway answer ({} when it is not one).

        Raises:
            GatewayUnavailable: the gateway refused the bot's key (401, 403).
        """
        if response.status_code in (401, 403):
            logger.error("the gateway refused the bot's key (%s): check GATEWAY_API_KEY", response.status_code)
            raise GatewayUnavailable("key refused")
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    @staticmethod
    def _parse(body: dict[str, Any], status: int) -> Reply:
        """Return the Reply of a body of the contract (messages, language, upload, handoff)."""
        language = body.get("language")
        upload = body.get("upload")
        handoff = body.get("handoff")
        return Reply(messages=[m for m in body.get("messages") or [] if isinstance(m, dict)],
                     language=language if isinstance(language, str) else None,
                     status=status, upload=upload if isinstance(upload, dict) else None,
                     handoff=handoff if isinstance(handoff, dict) else None)
