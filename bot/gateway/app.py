"""FastAPI gateway: the front door of every channel (contract of the foundation issue).

Endpoints (bearer key required except for /health and the OpenAPI spec):
    POST /v1/conversations/{conversation_id}/messages   {"text", "language"?} or {"payload"}
    POST /v1/conversations/{conversation_id}/protected  {"value"}
    POST /v1/conversations/{conversation_id}/files      multipart: file (+ language)
    GET  /v1/conversations/{conversation_id}/downloads/{token}   a document offered in a reply
    GET  /v1/conversations/{conversation_id}/images/{token}      a key image offered in a reply (PNG)
    GET  /v1/conversations/{conversation_id}/outbox     helpdesk messages between turns (long-poll ?wait=)
    GET  /v1/outbox?prefix=tg-                          the same for every conversation of a front end
    GET  /viewer/{token}                                a study's web viewer (link given in the chat)
    GET  /health                                        200 when Rasa's model and the actions are up
    POST /v1/voice/{conversation_id}                    {"text", "language"?} heard -> {"text", "ssml",
                                                        "protected_input", "end", "language"} to say
Replies: {"messages": [{"text", "buttons": [{"title", "payload"}], "image", "protected_input", "file"}]}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from bot.dsp import DspError, documents, helpdesk, imaging, vault
from bot.dsp import get_settings as dsp_settings
from bot.dsp.uow import UnitOfWork
from bot.gateway import cluster, console, messages, redact, replies, store, viewer, views, voice, web
from bot.gateway import language as lang
from bot.gateway.settings import get_settings

logger = logging.getLogger("bot.gateway")

CONVERSATION_ID = r"^[A-Za-z0-9_.:-]{1,128}$"
MAX_PROTECTED_CHARS = 512
PROTECTED_INTENT = "provide_protected"
SUPPORTED_LANGUAGES = ("fr", "de", "en")
#: Protected kinds taken exactly as typed (a passphrase may start or end with a space).
KINDS_TAKEN_AS_TYPED = ("password", "password_confirm")
#: Kinds whose answer may be typed in groups of digits or capitals.
CODE_KINDS = ("matricule", "activation_code", "otp", "pin", "pin_confirm", "phone")
#: Largest request body accepted, in bytes (files: the upload limit on top).
MAX_BODY_BYTES = 64_000
FILES_PATH = re.compile(r"^/v1/conversations/[^/]+/files$")
FILE_INTENT = "provide_file"
#: Milliseconds spent waiting on Rasa during the current request (W3C Server-Timing "rasa").
_rasa_ms: ContextVar[list[float] | None] = ContextVar("rasa_ms", default=None)
#: Path segments that carry a token (downloads, images, viewer): cut from the access log.
TOKEN_IN_PATH = re.compile(r"(/(?:downloads|images|viewer))/[^/]+")
#: Largest side of a key image sent in the chat, in pixels (Telegram photos are shown at most 1280).
CHAT_IMAGE_MAX_SIZE = 1024
#: One-word replies that stay conversation (not a secret) while a protected input is pending.
COMMAND_WORDS = frozenset({
    "annuler", "stop", "arreter", "abandonner", "aide", "retour", "helpdesk", "non",
    "abbrechen", "hilfe", "zuruck", "nein", "cancel", "help", "back", "quit", "no",
})


class Button(BaseModel):
    """A choice offered to the user; send `payload` back to choose it."""

    title: str
    payload: str


class ProtectedInput(BaseModel):
    """The next answer is a secret: send it to the /protected endpoint, never as text."""

    kind: str = Field(description="matricule, activation_code, password, password_confirm, email, phone, otp, "
                                  "reset_token, pin, pin_confirm")


class FileOut(BaseModel):
    """A document the assistant sends: fetch `url` (same bearer key) within 10 minutes."""

    name: str
    mime_type: str
    size_bytes: int
    url: str = Field(description="path of GET /v1/conversations/{id}/downloads/{token}")


class OutMessage(BaseModel):
    """One message of the assistant, channel-neutral."""

    text: str | None = None
    buttons: list[Button] = Field(default_factory=list)
    image: str | None = None
    protected_input: ProtectedInput | None = None
    file: FileOut | None = None
    custom: dict[str, Any] | None = Field(default=None, description='e.g. {"expects": "file"}: the next answer '
                                                                     "is a file for the /files endpoint")


class UploadOutcome(BaseModel):
    """What happened to a file sent to the /files endpoint."""

    accepted: bool
    error: str | None = Field(default=None, description="file_empty, file_too_large, file_type_refused, "
                                                        "file_damaged, file_duplicate, quota_exceeded, not_logged_in…")
    format: str | None = Field(default=None, description="pdf, jpeg, png, tiff, text, dicom (from the content)")
    size_bytes: int | None = None


class Handoff(BaseModel):
    """The conversation's helpdesk ticket.

    While it is "claimed" an agent answers and the assistant is silent: the user's messages go to
    the agent, the agent's come through the outbox endpoints.
    """

    reference: str = Field(description='e.g. "HD-000042"')
    status: str = Field(description="open (waiting for an agent) or claimed (an agent answers)")
    agent: str | None = Field(default=None, description="display name of the agent who claimed it")


class Reply(BaseModel):
    """What the assistant answers to one turn, and the conversation's language after it.

    `messages` is empty only while a helpdesk agent holds the conversation (`handoff.status` is
    "claimed"): the user's message went to the agent, who answers through the outbox.
    """

    messages: list[OutMessage]
    language: str | None = Field(default=None, description="fr, de or en")
    upload: UploadOutcome | None = Field(default=None, description="only in answers to the /files endpoint")
    handoff: Handoff | None = Field(default=None, description="the open helpdesk ticket, if any")


class ConversationOutbox(BaseModel):
    """Messages for one conversation that arrived outside a turn (helpdesk agent, notices)."""

    conversation_id: str
    language: str | None = None
    messages: list[OutMessage]
    handoff: Handoff | None = None


class Outbox(BaseModel):
    """Messages waiting for several conversations (one front end's share, by id prefix)."""

    conversations: list[ConversationOutbox]


class MessageIn(BaseModel):
    """A user's turn: free text (with an optional language) or the payload of an offered button."""

    text: str | None = Field(default=None, max_length=10_000)
    payload: str | None = Field(default=None, max_length=512)
    language: str | None = Field(default=None, description="fr, de or en; else kept or detected")


class ProtectedIn(BaseModel):
    """The answer to a pending protected-input request."""

    value: str = Field(max_length=10_000)
    kind: str | None = Field(default=None, max_length=32,
                             description="the kind being answered (from protected_input); a mismatch is refused")


bearer = HTTPBearer(auto_error=False)


def require_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Accept only the configured bearer key.

    Raises:
        HTTPException: 401 without a key or with a wrong one.
    """
    expected = get_settings().api_key
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid bearer key is required",
                            headers={"WWW-Authenticate": "Bearer"})


ConversationId = Annotated[str, Path(pattern=CONVERSATION_ID)]


class ConversationLocks:
    """One asyncio lock per conversation, so its turns run one at a time; unused locks are dropped."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, conversation_id: str) -> AsyncIterator[None]:
        """Hold the conversation's lock for the block."""
        lock, users = self._locks.get(conversation_id, (asyncio.Lock(), 0))
        self._locks[conversation_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[conversation_id]
            if users <= 1:
                del self._locks[conversation_id]
            else:
                self._locks[conversation_id] = (lock, users - 1)


class Gateway:
    """State shared by the requests of one gateway process: the HTTP client and turn locks."""

    def __init__(self) -> None:
        settings = get_settings()
        self.client = httpx.AsyncClient(timeout=settings.rasa_timeout_s)
        self.locks = cluster.make_locks(settings, ConversationLocks)  # Redis ones when REDIS_URL is set
        self.cluster = cluster.RasaCluster.from_settings(settings)  # RASA_URLS, failover

    async def rasa_turn(self, state: store.ConversationState, message: str) -> list[dict[str, Any]]:
        """Send one message to Rasa's REST channel and return Rasa's raw messages.

        The turn runs exactly once on one of the Rasa instances (`bot.gateway.cluster`), with its
        turn id (the request's Idempotency-Key, else a random one) in the message's metadata.

        Raises:
            httpx.HTTPError: Rasa unreachable or failing.
        """
        started = time.perf_counter()
        try:
            return await self.cluster.turn(state.conversation_id, message, {"language": state.language},
                                           cluster.next_turn_id())
        finally:
            spent = _rasa_ms.get()
            if spent is not None:
                spent.append((time.perf_counter() - started) * 1000)

    @staticmethod
    def to_reply(state: store.ConversationState, raw: list[dict[str, Any]]) -> Reply:
        """Turn Rasa's messages into the contract's messages and update the conversation state."""
        out: list[OutMessage] = []
        state.pending_kind = None
        offered: list[str] = []
        for item in raw:
            custom = item.get("custom")
            if isinstance(custom, dict):
                kind = (custom.get("protected_input") or {}).get("kind")
                if kind:
                    state.pending_kind = str(kind)
                    if out:
                        out[-1].protected_input = ProtectedInput(kind=state.pending_kind)
                    else:
                        out.append(OutMessage(protected_input=ProtectedInput(kind=state.pending_kind)))
                    continue
                if custom.get("set_language") in SUPPORTED_LANGUAGES:
                    state.language = custom["set_language"]
                    continue
                merged_keys = ("view", "expects", "end")  # {"end": true}: the goodbye (voice hangs up)
                if any(custom.get(key) for key in merged_keys) and out and out[-1].custom is None:
                    out[-1].custom = custom  # Rasa sends a response's custom part after its text
                    continue
            buttons = [Button(title=str(b.get("title", "")), payload=str(b.get("payload", "")))
                       for b in item.get("buttons") or [] if b.get("payload")]
            offered += [b.payload for b in buttons]
            if item.get("text") or item.get("image") or buttons or custom:
                out.append(OutMessage(text=item.get("text"), buttons=buttons, image=item.get("image"),
                                      custom=custom if isinstance(custom, dict) else None))
        if offered:  # new choices replace the old; a reply without choices leaves the open ones valid
            state.offered = []
            state.offer(offered)
            state.last_choices = offered
        if state.pending_kind and out and out[-1].protected_input is None:
            out[-1].protected_input = ProtectedInput(kind=state.pending_kind)
        return Reply(messages=out)

    async def answer_protected(self, state: store.ConversationState, raw: str) -> Reply:
        """Put the answer to the pending protected input in the vault; send Rasa only its reference.

        Raises:
            HTTPException: 422 when the value is too long.
        """
        kind = state.pending_kind or ""
        value = raw if kind in KINDS_TAKEN_AS_TYPED else raw.strip()
        if len(value) > MAX_PROTECTED_CHARS:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, messages.text("too_long", state.language))

        def put() -> str:
            with UnitOfWork() as uow:
                ref = vault.put(uow, state.conversation_id, kind, value)
                uow.commit()
                return ref

        ref = await asyncio.to_thread(put)
        state.pending_kind = None
        return await self.turn(state, f"/{PROTECTED_INTENT}" + json.dumps({"protected_ref": ref}), [])

    async def turn(self, state: store.ConversationState, message: str, notes: list[str]) -> Reply:
        """Run one turn: Rasa, conversion, state saved; `notes` are gateway messages said first."""
        try:
            raw = await self.rasa_turn(state, message)
        except httpx.HTTPError as exc:
            logger.error("Rasa turn failed: %s", type(exc).__name__)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                messages.text("unavailable", state.language)) from None
        had_choices = any(item.get("buttons") for item in raw)
        reply = self.to_reply(state, raw)
        await self.render_views(state, reply, had_choices)
        await asyncio.to_thread(store.save, state)
        reply.messages[:0] = [OutMessage(text=messages.text(note, state.language)) for note in notes]
        if not reply.messages:  # never leave the user without an answer
            reply.messages.append(OutMessage(text=messages.text("no_answer", state.language)))
        reply.language = state.language
        reply.handoff = await self.handoff_of(state.conversation_id)
        return reply


    async def handle_payload(self, state: store.ConversationState, payload: str, language: str | None) -> Reply:
        """Run a turn for the payload of an offered button (call with the conversation's lock held).

        Raises:
            HTTPException: 409 when the payload was not offered in this conversation.
        """
        if language in SUPPORTED_LANGUAGES:
            state.language = language
        if payload not in state.offered:
            raise HTTPException(status.HTTP_409_CONFLICT, messages.text("unknown_choice", state.language))
        held = await self.held_by_agent(state)
        if held is not None:  # an agent answers: old buttons no longer reach the assistant
            return Reply(messages=[], language=state.language, handoff=held)
        return await self.turn(state, payload, [])

    async def handle_text(self, state: store.ConversationState, raw: str, language: str | None) -> Reply:
        """Run a turn for a user's text (call with the conversation's lock held).

        A text that answers a pending secret goes to the vault; a bare number chooses among the
        latest choices; anything else is redacted, its language settled, and sent to Rasa. While a
        helpdesk agent holds the conversation, the text goes to the agent instead (redacted; a
        secret-looking answer is not passed on) and the reply has no message.
        """
        held = await self.held_by_agent(state)
        if held is not None:
            return await self.relay_to_agent(state, raw, held)
        number = raw.strip().rstrip(".)")
        is_choice = number.isascii() and number.isdigit() and 1 <= int(number) <= len(state.last_choices)
        # No secret is one or two digits long: with choices open (e.g. "no e-mail address" under
        # the e-mail question), such a number is a choice even while a secret is pending.
        if state.pending_kind and looks_like_an_answer(raw, state.pending_kind) and not (
                is_choice and len(number) <= 2):
            # A client typed the secret in the open chat: it still goes to the vault, never to Rasa.
            if (language or "").lower() in SUPPORTED_LANGUAGES:
                state.language = (language or "").lower()
            return await self.answer_protected(state, raw)
        if is_choice:
            # "2" answers the latest choices (voice and text-only clients have no buttons)
            if language in SUPPORTED_LANGUAGES:
                state.language = language
            return await self.turn(state, state.last_choices[int(number) - 1], [])
        text, masked = redact.clean(raw)
        await choose_language(state, language, text)
        if not text.replace(redact.PLACEHOLDER, "").strip():
            reply = Reply(messages=[OutMessage(text=messages.text("masked" if masked else "empty", state.language))],
                          language=state.language)
            await asyncio.to_thread(store.save, state)
            return reply
        return await self.turn(state, text, ["masked"] if masked else [])

    async def held_by_agent(self, state: store.ConversationState) -> Handoff | None:
        """Return the conversation's ticket when an agent has claimed it, else None."""
        handoff = await self.handoff_of(state.conversation_id)
        return handoff if handoff is not None and handoff.status == "claimed" else None

    @staticmethod
    async def handoff_of(conversation_id: str) -> Handoff | None:
        """Return the conversation's open or claimed helpdesk ticket, or None."""

        def find() -> helpdesk.TicketInfo | None:
            with UnitOfWork() as uow:
                return helpdesk.active_ticket(uow, conversation_id)

        ticket = await asyncio.to_thread(find)
        if ticket is None:
            return None
        return Handoff(reference=ticket.reference, status=ticket.status, agent=ticket.claimed_by)

    async def relay_to_agent(self, state: store.ConversationState, raw: str, held: Handoff) -> Reply:
        """Pass the user's text to the agent who holds the conversation (redacted); no assistant reply."""
        if state.pending_kind:
            # An answer to a private question asked before the agent took over (typed or spoken, in
            # any form): neither relayed nor kept.
            state.pending_kind = None
            await asyncio.to_thread(store.save, state)
            return Reply(messages=[OutMessage(text=messages.handoff("secret_not_relayed", state.language))],
                         language=state.language, handoff=held)
        text, masked = redact.clean(raw)
        if text.replace(redact.PLACEHOLDER, "").strip():

            def relay() -> None:
                with UnitOfWork() as uow:
                    ticket = helpdesk.active_ticket(uow, state.conversation_id)
                    if ticket is not None:
                        helpdesk.relay_user_message(uow, ticket.id, text)
                    uow.commit()

            await asyncio.to_thread(relay)
        notes = [OutMessage(text=messages.text("masked", state.language))] if masked else []
        return Reply(messages=notes, language=state.language, handoff=held)

    async def render_views(self, state: store.ConversationState, reply: Reply, had_choices: bool) -> None:
        """Fill in the views of the reply (names, titles, files) and offer their buttons."""
        offered: list[str] = []
        for message in reply.messages:
            custom = message.custom or {}
            if not custom.get("view"):
                continue
            rendered = await views.render(state.conversation_id, state.language or "fr", custom, message.text)
            if rendered.text is not None:
                message.text = rendered.text
            for title, payload in rendered.buttons or []:
                message.buttons.append(Button(title=title, payload=payload))
                offered.append(payload)
            if rendered.file:
                message.file = FileOut(**rendered.file)
            if rendered.image:
                message.image = rendered.image
            message.custom = {key: value for key, value in custom.items()
                              if key not in ("view", "ids", "holder_id", "document_id", "study_id",
                                             "instance_id")} or None
        if offered:
            if not had_choices:
                state.offered = []
                state.last_choices = []
            state.offer(offered)
            state.last_choices = state.last_choices + offered


def looks_like_an_answer(text: str, kind: str = "") -> bool:
    """Return True when a text typed in the open chat is the answer to the pending secret.

    One word that is not a command word; for codes and numbers (matricule, activation code,
    one-time code, PIN, phone) also digits or letters in groups ("000 743", "1985 0412 123 45").
    """
    words = text.split()
    if kind in CODE_KINDS and words and re.fullmatch(r"[+0-9A-Za-z .-]{4,40}", text.strip()) and all(
        any(ch.isdigit() for ch in word) or word.isupper() for word in words
    ):
        return True
    if len(words) != 1:
        return False
    folded = unicodedata.normalize("NFKD", words[0].lower()).encode("ascii", "ignore").decode()
    return folded.strip(".!?") not in COMMAND_WORDS


async def choose_language(state: store.ConversationState, requested: str | None, text: str) -> None:
    """Set the conversation's language: the client's choice, else a clear detection, else kept."""
    requested = (requested or "").strip().lower()
    if requested in SUPPORTED_LANGUAGES:
        state.language = requested
        return
    detected = await asyncio.to_thread(lang.detect, text) if text else None
    if detected:
        state.language = detected
    elif state.language is None:
        state.language = get_settings().default_language


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Set up logging, create the tables, warm the language models, open the HTTP client."""
    if not logging.getLogger("bot").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s"))
        logging.getLogger("bot").addHandler(handler)
        logging.getLogger("bot").setLevel(logging.INFO)
    await asyncio.to_thread(store.create_tables)
    await asyncio.to_thread(lang.warm_up)
    await asyncio.to_thread(replies.maybe_purge)
    app.state.gateway = Gateway()
    yield
    await app.state.gateway.cluster.aclose()
    if hasattr(app.state.gateway.locks, "aclose"):
        await app.state.gateway.locks.aclose()
    await app.state.gateway.client.aclose()


app = FastAPI(title="MyDSP Assistant gateway", version="1.0.0", lifespan=lifespan,
              description="The one front door of every channel of MyDSP Assistant.")
app.include_router(web.router)
app.include_router(viewer.router)
app.include_router(console.router)  # helpdesk console, /helpdesk


def gateway_of(request: Request) -> Gateway:
    """Return the process's Gateway."""
    return request.app.state.gateway  # type: ignore[no-any-return]


@app.middleware("http")
async def access_log_and_errors(request: Request, call_next: Any) -> Any:
    """Log requests, contain unexpected errors, and time them.

    Every response carries a W3C Server-Timing header, ``rasa;dur=<ms>, total;dur=<ms>``: the time
    spent waiting on Rasa and the whole time in the gateway (milliseconds), which `make bench` uses
    to split the gateway's overhead. The log line has no query string (a reset link carries its
    token there) and no token of a download, image or viewer link; an unexpected error is
    answered without a stack trace or a value, and only its type is logged.
    """
    started = time.perf_counter()
    path = "".join(ch if ch.isprintable() else "?" for ch in request.url.path)[:200]
    logged_path = TOKEN_IN_PATH.sub(r"\1/…", path)  # tokens are capabilities: never in a log
    length = request.headers.get("content-length", "")
    chunked = "chunked" in request.headers.get("transfer-encoding", "")
    too_long = length.isdigit() and int(length) > MAX_BODY_BYTES and not FILES_PATH.match(path)  # files: see post_file
    if too_long or (request.method == "POST" and chunked):
        logger.info("%s %s 413 (body too large)", request.method, logged_path)
        return JSONResponse({"messages": [{"text": messages.text("too_long", None)}]}, status_code=413)
    rasa_ms: list[float] = []
    token = _rasa_ms.set(rasa_ms)
    try:
        response = await call_next(request)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        logger.error("unexpected %s on %s %s", type(exc).__name__, request.method, logged_path)
        response = JSONResponse({"messages": [{"text": messages.text("unavailable", None)}]}, status_code=500)
    finally:
        _rasa_ms.reset(token)
    total_ms = (time.perf_counter() - started) * 1000
    response.headers["Server-Timing"] = f"rasa;dur={sum(rasa_ms):.1f}, total;dur={total_ms:.1f}"
    logger.info("%s %s %s %.0f ms", request.method, logged_path, response.status_code, total_ms)
    return response


@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Refuse a malformed request without echoing what was sent (it may hold a secret)."""
    fields = [".".join(str(part) for part in error.get("loc", ())) for error in exc.errors()]
    return JSONResponse({"detail": [{"loc": f, "msg": "invalid"} for f in fields],
                         "messages": [{"text": messages.text("invalid", None)}]}, status_code=422)


@app.exception_handler(HTTPException)
async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Answer an HTTP error as a message list, so every client can show it."""
    return JSONResponse({"detail": exc.detail, "messages": [{"text": str(exc.detail)}]},
                        status_code=exc.status_code, headers=exc.headers)


@app.post("/v1/conversations/{conversation_id}/messages", response_model=Reply,
          dependencies=[Depends(require_key)], response_model_exclude_none=False)
async def post_message(conversation_id: ConversationId, body: MessageIn, request: Request,
                       idempotency_key: cluster.IdempotencyKey = None) -> Reply:
    """Send the user's text, or the payload of a button the gateway offered, and get the replies."""
    gateway = gateway_of(request)
    async with cluster.turn_guard(gateway.locks, conversation_id, idempotency_key) as guard:
        if guard.stored is not None:
            return Reply.model_validate(guard.stored)
        state = await asyncio.to_thread(store.load, conversation_id)
        if body.payload is not None:
            return guard.keep(await gateway.handle_payload(state, body.payload, body.language))
        return guard.keep(await gateway.handle_text(state, body.text or "", body.language))


@app.post("/v1/conversations/{conversation_id}/protected", response_model=Reply,
          dependencies=[Depends(require_key)])
async def post_protected(conversation_id: ConversationId, body: ProtectedIn, request: Request,
                         idempotency_key: cluster.IdempotencyKey = None) -> Reply:
    """Answer the pending protected-input request; the value goes to the DSP vault, never to Rasa."""
    gateway = gateway_of(request)
    async with cluster.turn_guard(gateway.locks, conversation_id, idempotency_key) as guard:
        if guard.stored is not None:
            return Reply.model_validate(guard.stored)
        state = await asyncio.to_thread(store.load, conversation_id)
        if not state.pending_kind or (body.kind is not None and body.kind != state.pending_kind):
            # Nothing asked, or an answer to an earlier question (a repeated post) — never reuse it.
            raise HTTPException(status.HTTP_409_CONFLICT, messages.text("nothing_pending", state.language))
        return guard.keep(await gateway.answer_protected(state, body.value))


def upload_limit_bytes() -> int:
    """Return the largest file accepted, in bytes (DSP_UPLOAD_MAX_MB)."""
    return int(dsp_settings().upload_max_mb * 1024 * 1024)


def stage_file(conversation_id: str, data: bytes, filename: str | None) -> documents.StagedFile:
    """Check and keep an uploaded file for the conversation's record (domain layer, worker thread)."""
    with UnitOfWork() as uow:
        documents.purge_expired_uploads(uow)  # files staged but never filed (their task was left)
        uow.commit()
        try:
            staged = documents.stage_upload(uow, conversation_id, data, filename)
        except DspError:
            uow.commit()  # the refusal's audit row
            raise
        uow.commit()
        return staged


@app.post("/v1/conversations/{conversation_id}/files", response_model=Reply,
          dependencies=[Depends(require_key)])
async def post_file(conversation_id: ConversationId, request: Request,
                    idempotency_key: cluster.IdempotencyKey = None) -> Reply:
    """Send a file (multipart field `file`, optional field `language`) for the record.

    The type is decided from the content, never from the name or the declared type. Refused files
    (empty, too large, not an accepted type, damaged, already in the record, over the quota, or
    sent without a login) are not stored; the assistant says why and the conversation goes on.
    The reply says what happened in `upload`.
    """
    gateway = gateway_of(request)
    limit = upload_limit_bytes()
    async with cluster.turn_guard(gateway.locks, conversation_id, idempotency_key) as guard:
        if guard.stored is not None:  # a retry: the file was taken the first time
            return Reply.model_validate(guard.stored)
        state = await asyncio.to_thread(store.load, conversation_id)
        held = await gateway.held_by_agent(state)
        if held is not None:
            return Reply(messages=[OutMessage(text=messages.handoff("file_not_relayed", state.language))],
                         language=state.language, handoff=held, upload=UploadOutcome(accepted=False,
                                                                                     error="handoff_active"))
        declared = request.headers.get("content-length", "")
        error: str | None = None
        staged: documents.StagedFile | None = None
        if declared.isdigit() and int(declared) > limit + MAX_BODY_BYTES:
            error = "file_too_large"  # refused without keeping anything: the body is read and dropped
            drained = 0
            async for chunk in request.stream():
                drained += len(chunk)
                if drained > 8 * limit:
                    break  # the connection closes; the client still gets the answer if it reads it
        else:
            try:
                form = await request.form(max_files=1, max_fields=4)
            except Exception:  # noqa: BLE001 - malformed multipart
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                                    messages.text("file_missing", state.language)) from None
            upload = form.get("file")
            language = form.get("language")
            if isinstance(language, str) and language.strip().lower() in SUPPORTED_LANGUAGES:
                state.language = language.strip().lower()
            if upload is None or isinstance(upload, str):
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, messages.text("file_missing",
                                                                                        state.language))
            data = await upload.read(limit + 1)
            filename = upload.filename
            await upload.close()
            if len(data) > limit:
                error = "file_too_large"
            else:
                try:
                    staged = await asyncio.to_thread(stage_file, conversation_id, data, filename)
                except DspError as refusal:
                    error = refusal.code
        if state.language is None:
            state.language = get_settings().default_language
        entity = {"upload_ref": staged.ref} if staged else {"upload_error": error}
        reply = await gateway.turn(state, f"/{FILE_INTENT}" + json.dumps(entity), [])
        reply.upload = UploadOutcome(accepted=staged is not None, error=error,
                                     format=staged.format if staged else None,
                                     size_bytes=staged.size_bytes if staged else None)
        return guard.keep(reply)


@app.get("/v1/conversations/{conversation_id}/downloads/{token}", dependencies=[Depends(require_key)])
async def get_download(conversation_id: ConversationId, token: Annotated[str, Path(max_length=200)]) -> Response:
    """Download a document offered in a reply (link valid 10 minutes, this conversation only; audited)."""
    document_id = views.check_download_token(conversation_id, token)
    if document_id is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, messages.text("download_expired", None))

    def read() -> tuple[documents.DocumentInfo, bytes]:
        with UnitOfWork() as uow:
            try:
                return documents.read_document(uow, conversation_id, document_id)
            finally:
                uow.commit()  # the read's audit row, refusals included

    try:
        info, data = await asyncio.to_thread(read)
    except DspError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, messages.text("document_gone", None)) from None
    return Response(content=data, media_type=info.mime_type, headers={
        "Content-Disposition": views.content_disposition(views.file_name(info)),
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
    })


@app.get("/v1/conversations/{conversation_id}/images/{token}", dependencies=[Depends(require_key)],
         responses={200: {"content": {"image/png": {}}}})
async def get_image(conversation_id: ConversationId, token: Annotated[str, Path(max_length=600)]) -> Response:
    """A key image offered in a reply's `image`, as PNG bounded for chat (10 minutes, this conversation; audited)."""
    claims = views.unseal("image", token)
    if claims is None or claims.get("c") != conversation_id or not isinstance(claims.get("i"), int):
        raise HTTPException(status.HTTP_404_NOT_FOUND, messages.text("download_expired", None))

    def render() -> imaging.RenderedImage:
        with UnitOfWork() as uow:
            try:
                return imaging.render_instance(uow, conversation_id, claims["i"], max_size=CHAT_IMAGE_MAX_SIZE)
            finally:
                uow.commit()  # the read's audit row, refusals included

    try:
        rendered = await asyncio.to_thread(render)
    except DspError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, messages.imaging("not_renderable", None)) from None
    return Response(content=rendered.png, media_type="image/png",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


# --------------------------------------------------------------------------- helpdesk outbox
#: Longest wait of a long-poll on the outbox, in seconds.
OUTBOX_MAX_WAIT_S = 25.0
#: How often a long-poll looks at the database, in seconds.
OUTBOX_POLL_S = 0.5
OutboxPrefix = Annotated[str, Query(pattern=r"^(tg|term|voice)-$",
                                    description='the front end\'s conversation id prefix: "tg-", "term-" or "voice-"')]
Wait = Annotated[float, Query(ge=0, le=OUTBOX_MAX_WAIT_S, description="seconds to wait for a message (long-poll)")]


def render_delivery(delivery: helpdesk.Delivery, language: str | None, reference: str) -> OutMessage:
    """Turn a helpdesk delivery into a message in the user's language."""
    agent = delivery.agent_name or "Helpdesk"
    return OutMessage(text=messages.handoff(delivery.kind, language, agent=agent, reference=reference,
                                            text=delivery.text or ""))


def take_deliveries(conversation_id: str | None, prefix: str | None) -> dict[str, list[OutMessage]]:
    """Return the undelivered helpdesk messages by conversation, marked delivered (worker thread)."""
    with UnitOfWork() as uow:
        pending = helpdesk.pending_deliveries(uow, conversation_id=conversation_id, prefix=prefix)
        if not pending:
            return {}
        claimed = set(helpdesk.mark_delivered(uow, [delivery.id for delivery in pending]))
        pending = [delivery for delivery in pending if delivery.id in claimed]  # another worker took the rest
        if not pending:
            return {}
        references = {}
        for delivery in pending:
            if delivery.ticket_id not in references:
                ticket = helpdesk.ticket_info(uow, delivery.ticket_id)
                references[delivery.ticket_id] = ticket.reference if ticket else ""
        uow.commit()
    out: dict[str, list[OutMessage]] = {}
    for delivery in pending:
        language = store.load(delivery.conversation_id).language
        out.setdefault(delivery.conversation_id, []).append(
            render_delivery(delivery, language, references[delivery.ticket_id]))
    return out


async def wait_for_deliveries(conversation_id: str | None, prefix: str | None,
                              wait_s: float) -> dict[str, list[OutMessage]]:
    """Long-poll: return the deliveries as soon as there are some, or {} after `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        found = await asyncio.to_thread(take_deliveries, conversation_id, prefix)
        if found or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(min(OUTBOX_POLL_S, max(0.0, deadline - time.monotonic())))


@app.get("/v1/conversations/{conversation_id}/outbox", response_model=Reply, dependencies=[Depends(require_key)])
async def get_outbox(conversation_id: ConversationId, request: Request, wait: Wait = 0) -> Reply:
    """Messages that reached the conversation between turns (helpdesk agent), each returned once.

    They are: a helpdesk agent taking the request, the agent's replies, the agent closing it (the
    assistant then answers again). With `wait`, the call returns as soon as one arrives (long-poll).
    """
    found = await wait_for_deliveries(conversation_id, None, wait)
    state = await asyncio.to_thread(store.load, conversation_id)
    return Reply(messages=found.get(conversation_id, []), language=state.language,
                 handoff=await gateway_of(request).handoff_of(conversation_id))


@app.get("/v1/outbox", response_model=Outbox, dependencies=[Depends(require_key)])
async def get_outboxes(prefix: OutboxPrefix, wait: Wait = 0) -> Outbox:
    """The outbox of every conversation whose id starts with `prefix`, each message returned once.

    One call serves a whole front end (e.g. the Telegram bot with "tg-"); long-poll with `wait`.
    """
    found = await wait_for_deliveries(None, prefix, wait)
    out = []
    for conversation_id, items in found.items():
        state = await asyncio.to_thread(store.load, conversation_id)
        out.append(ConversationOutbox(conversation_id=conversation_id, language=state.language, messages=items,
                                      handoff=await Gateway.handoff_of(conversation_id)))
    return Outbox(conversations=out)


@app.get("/health")
async def health(request: Request) -> JSONResponse:
    """Return 200 while a Rasa instance has its model loaded and an action server answers.

    The body says it for each: {"status", "rasa_model", "action_server", "rasa": [{"instance", "up"}],
    "actions": [{"instance", "up"}]} (instances numbered in RASA_URLS / ACTION_SERVER_URLS order).
    """
    healthy, body = await cluster.health(gateway_of(request).cluster, get_settings().action_server_urls)
    return JSONResponse(body, status_code=200 if healthy else 503)


# --------------------------------------------------------------------------- voice front ends
#: What a spoken command sends to Rasa, per language (Rasa's NLU knows these words).
VOICE_TO_RASA = {
    "cancel": {"fr": "annuler", "de": "abbrechen", "en": "cancel"},
    "help": {"fr": "aide", "de": "Hilfe", "en": "help"},
    "helpdesk": {"fr": "je voudrais parler à un conseiller du helpdesk",
                 "de": "Ich möchte mit einem Berater vom Helpdesk sprechen",
                 "en": "I would like to talk to a real person at the helpdesk"},
}
#: Offered payloads that a spoken yes / no chooses.
VOICE_ANSWERS = {"yes": ("/affirm", "/accept_terms"), "no": ("/deny", "/refuse_terms")}


class VoiceIn(BaseModel):
    """One spoken turn: what the front end's speech recognition heard ("" for silence)."""

    text: str = Field(default="", max_length=2_000, description="the transcribed utterance; empty: silence")
    language: str | None = Field(default=None, description="fr, de or en; else kept or detected")


class VoiceReply(BaseModel):
    """What to say, as plain text and as SSML, and how to handle the next utterance.

    When `protected_input` is set the next utterance is a secret: switch off transcript logging;
    the gateway puts it in the vault (never in Rasa). When `end` is true, say the text and hang up.
    """

    text: str = Field(description="plain text for any speech engine: no emoji, Markdown or URL")
    ssml: str = Field(description="the same as an SSML 1.1 <speak> document")
    protected_input: ProtectedInput | None = None
    end: bool = Field(default=False, description="the conversation is over: hang up after speaking")
    language: str | None = Field(default=None, description="fr, de or en")
    handoff: Handoff | None = Field(default=None, description="the open helpdesk ticket, if any")


def voice_language(state: store.ConversationState) -> str:
    """Return the conversation's language for speech (the default before one is known)."""
    return state.language if state.language in SUPPORTED_LANGUAGES else get_settings().default_language


async def voice_say(state: store.ConversationState, segments: list[voice.Segment], *, end: bool = False,
                    remember: bool = True, handoff: Handoff | None = None) -> VoiceReply:
    """Save the voice memory and return `segments` as a VoiceReply (the pending secret still pending)."""
    language = voice_language(state)
    if remember:
        state.voice["said"] = [[s.kind, s.value, s.lang] for s in segments]
    await asyncio.to_thread(store.save, state)
    speech = voice.speech_of(segments, language)
    pending = ProtectedInput(kind=state.pending_kind) if state.pending_kind else None
    return VoiceReply(text=speech.text, ssml=speech.ssml, protected_input=pending, end=end, language=language,
                      handoff=handoff)


def voice_said(state: store.ConversationState) -> list[voice.Segment]:
    """Return the last reply spoken in the conversation (empty before the first)."""
    return [voice.Segment(*item) for item in state.voice.get("said") or []]


async def voice_reply(state: store.ConversationState, reply: Reply) -> VoiceReply:
    """Speak a gateway reply: render it, remember its options, and say it."""
    language = voice_language(state)
    rendered = voice.render([m.model_dump() for m in reply.messages], language, state.last_choices)
    segments = rendered.segments
    if not segments:  # an agent holds the conversation: the message went to them
        segments = voice.say([voice.localized("relayed", language)], language)
    if rendered.labels:
        state.voice.update(options=rendered.labels, page=0)
    return await voice_say(state, segments, end=rendered.end, handoff=reply.handoff)


async def voice_turn(gateway: Gateway, state: store.ConversationState, heard: str,
                     language: str | None) -> VoiceReply:
    """Run one spoken turn (the conversation's lock held); see `post_voice`.

    A call has no push channel: the helpdesk messages waiting for the conversation (an agent
    taking it, replying, closing it) are read out first.
    """
    waiting = await asyncio.to_thread(take_deliveries, state.conversation_id, None)
    reply = await spoken_turn(gateway, state, heard, language)
    notices = [m.text for m in waiting.get(state.conversation_id, []) if m.text]
    if not notices:
        return reply
    lang = voice_language(state)
    spoken = voice.join(voice.say(notices, lang), voice.say([reply.text], lang) if reply.text else [])
    return await voice_say(state, spoken, end=reply.end, remember=False, handoff=reply.handoff)


async def spoken_turn(gateway: Gateway, state: store.ConversationState, heard: str,
                      language: str | None) -> VoiceReply:
    """Answer one utterance (see `voice_turn`)."""
    heard = " ".join(heard.split())
    if await gateway.held_by_agent(state) is not None:
        if not heard:
            return await voice_say(state, [], remember=False)
        return await voice_reply(state, await gateway.handle_text(state, voice.digits_in_text(heard), language))
    if not heard:  # silence: the question again, then the helpdesk, then goodbye
        silences = int(state.voice.get("silences") or 0) + 1
        state.voice["silences"] = silences
        lang = voice_language(state)
        if silences >= voice.MAX_SILENCES:
            state.voice["silences"] = 0
            return await voice_say(state, voice.say([voice.localized("silence_end", lang)], lang), end=True,
                                   remember=False)
        if silences == 2:
            offer = voice.localized("silence_helpdesk", lang, phone=voice.HELPDESK_PHONE)
            return await voice_say(state, voice.say([offer], lang))
        heard_nothing = voice.say([voice.localized("nothing_heard", lang)], lang)
        said = voice_said(state) or voice.say([voice.localized("nothing_to_repeat", lang)], lang)
        return await voice_say(state, voice.join(heard_nothing, said), remember=False)
    state.voice["silences"] = 0
    command = voice.command_of(heard)
    name = command[0] if command else None
    if command and state.language is None:
        state.language = command[1]
    lang = voice_language(state)
    options: list[str] = list(state.voice.get("options") or [])
    page = int(state.voice.get("page") or 0)
    if name == "repeat":
        said = voice_said(state) or voice.say([voice.localized("nothing_to_repeat", lang)], lang)
        return await voice_say(state, said)
    if name == "next" or (name == "back" and page > 0):
        page = page + voice.PAGE_SIZE if name == "next" else max(0, page - voice.PAGE_SIZE)
        if options and page < len(options):
            state.voice["page"] = page
        return await voice_say(state, voice.describe_page(options, lang, page))
    count = len(state.last_choices)
    number = voice.choice_of(heard, count) if count and name is None else None
    if number is not None:
        if number > count:
            wrong = voice.say([voice.localized("choice_range", lang, count=count)], lang)
            return await voice_say(state, voice.join(wrong, voice.describe_page(options, lang, page)))
        return await voice_reply(state, await gateway.handle_text(state, str(number), language))
    if name in VOICE_ANSWERS:
        payload = next((p for p in state.last_choices if p in VOICE_ANSWERS[name]), None)
        if payload is not None:
            return await voice_reply(state, await gateway.handle_payload(state, payload, language))
    if name in ("cancel", "help", "helpdesk", "back"):
        words = VOICE_TO_RASA["cancel" if name == "back" else name]
        return await voice_reply(state, await gateway.handle_text(state, words[lang], language))
    if state.pending_kind:  # a secret: to the vault exactly as through /protected, never to Rasa
        if (language or "").lower() in SUPPORTED_LANGUAGES:
            state.language = (language or "").lower()
        value = voice.normalise_protected(heard, state.pending_kind)
        return await voice_reply(state, await gateway.answer_protected(state, value))
    return await voice_reply(state, await gateway.handle_text(state, voice.digits_in_text(heard), language))


@app.post("/v1/voice/{conversation_id}", response_model=VoiceReply, dependencies=[Depends(require_key)])
async def post_voice(conversation_id: ConversationId, body: VoiceIn, request: Request,
                     idempotency_key: cluster.IdempotencyKey = None) -> Any:
    """One turn of a voice front end: what was heard in, what to say (text and SSML) out.

    The front end does speech recognition and synthesis. Spoken choices ("deux", "option 2", "le
    deuxième"), yes / no, "répète" / "noch einmal" / "repeat", "suivant" (more options), "retour",
    "aide", "annuler" and "un conseiller" are understood in French, German and English. While
    `protected_input` is set, the utterance is a secret: spoken digits, codes and e-mail addresses
    are normalised and the value goes to the vault exactly as through /protected. An empty text is
    a silence: the question is repeated, then the helpdesk offered, then the call ends. Errors
    are spoken too (same body, with the error's status code).
    """
    gateway = gateway_of(request)
    try:
        async with cluster.turn_guard(gateway.locks, conversation_id, idempotency_key) as guard:
            if guard.stored is not None:
                return VoiceReply.model_validate(guard.stored)
            state = await asyncio.to_thread(store.load, conversation_id)
            requested = (body.language or "").strip().lower()
            if requested in SUPPORTED_LANGUAGES:
                state.language = requested
            try:
                return guard.keep(await voice_turn(gateway, state, body.text, requested or None))
            except HTTPException as exc:
                return spoken_error(state, exc)
    except HTTPException as exc:  # the conversation's lock: busy (429) or unavailable (503)
        try:
            state = await asyncio.to_thread(store.load, conversation_id)
        except Exception:  # noqa: BLE001 - the database may be what fails: speak in the default language
            state = store.ConversationState(conversation_id)
        return spoken_error(state, exc)


def spoken_error(state: store.ConversationState, exc: HTTPException) -> JSONResponse:
    """Return an error of the voice endpoint as a VoiceReply body with the error's status code."""
    lang = voice_language(state)
    speech = voice.speech_of(voice.say([str(exc.detail)], lang), lang)
    pending = ProtectedInput(kind=state.pending_kind) if state.pending_kind else None
    content = VoiceReply(text=speech.text, ssml=speech.ssml, protected_input=pending, language=lang)
    return JSONResponse(content.model_dump(), status_code=exc.status_code, headers=exc.headers)
