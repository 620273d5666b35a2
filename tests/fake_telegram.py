"""A fake Telegram Bot API server on loopback, for the Telegram front end's tests and benchmark.

It speaks the Bot API's HTTP conventions (`POST /bot<token>/<method>`, form or multipart parameters,
`{"ok": true, "result": ...}` answers, `GET /file/bot<token>/<file_path>` downloads) for the methods
the bot uses, records every call, feeds queued updates to getUpdates (long polling: the call waits
until an update arrives or its timeout ends), and can answer chosen calls with an error — e.g. 429
with `retry_after`. It runs uvicorn (Starlette) in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

#: Parameters the Bot API carries as JSON-serialized values.
JSON_PARAMS = {"reply_markup", "commands", "allowed_updates", "link_preview_options", "entities", "caption_entities",
               "scope", "reply_parameters"}
INT_PARAMS = {"chat_id", "message_id", "offset", "limit", "timeout", "retry_after"}
BOT_USER = {"id": 777000111, "is_bot": True, "first_name": "MyDSP Assistant", "username": "mydsp_test_bot",
            "can_join_groups": False, "can_read_all_group_messages": False, "supports_inline_queries": False}


@dataclass
class Call:
    """One Bot API call the bot made."""

    method: str
    params: dict[str, Any]
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    status: int = 200
    at: float = 0.0
    result: Any = None

    @property
    def chat_id(self) -> int | None:
        """The chat the call is about, if any."""
        value = self.params.get("chat_id")
        return int(value) if value is not None else None


#: Characters MarkdownV2 reserves: outside an entity they must be escaped with a backslash.
MARKDOWN_V2_RESERVED = set("_*[]()~`>#+-=|{}.!")


def markdown_v2_problem(params: dict[str, Any]) -> str | None:
    """Return Telegram's parse error for a MarkdownV2 text or caption, as the real API would; None if valid.

    Bold (`*…*`) is the only entity the bot writes on purpose; any other reserved character must be
    escaped.
    """
    if params.get("parse_mode") != "MarkdownV2":
        return None
    for key in ("text", "caption"):
        value = str(params.get(key) or "")
        bold = 0
        index = 0
        while index < len(value):
            char = value[index]
            if char == "\\":
                index += 2
                continue
            if char == "*":
                bold += 1
            elif char in MARKDOWN_V2_RESERVED:
                return f"can't parse entities: Character '{char}' is reserved and must be escaped"
            index += 1
        if bold % 2:
            return "can't parse entities: Can't find end of Bold entity"
    return None


def free_port() -> int:
    """Return a free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeBotApi:
    """The fake server: feed updates with `push`, read `calls`, arm errors with `fail_next`."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.port = free_port()
        self.calls: list[Call] = []
        self.polls = 0
        self.files: dict[str, bytes] = {}
        self.chats: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(100_000)
        self._message_ids = itertools.count(500_000)
        self._file_ids = itertools.count(1)
        self._failures: dict[str, list[dict[str, Any]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Root URL of the fake (TELEGRAM_API_BASE_URL)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeBotApi:
        """Serve in a background thread; return once it listens."""
        app = Starlette(routes=[Route("/bot{token}/{method}", self._method, methods=["GET", "POST"]),
                                Route("/file/bot{token}/{path:path}", self._download, methods=["GET"])],
                        lifespan=self._lifespan)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                access_log=False, timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-bot-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake Bot API did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (long polls waiting for updates return at once)."""
        self._closing = True
        if self._loop is not None and self._wakeup is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        yield

    # ------------------------------------------------------------------ test controls

    def push(self, *updates: dict[str, Any]) -> list[int]:
        """Queue updates for getUpdates (an `update_id` is given to those without); return their ids."""
        ids = []
        with self._lock:
            for update in updates:
                update.setdefault("update_id", next(self._update_ids))
                ids.append(update["update_id"])
                for key in ("message", "edited_message", "channel_post", "callback_query", "my_chat_member"):
                    chat = (update.get(key) or {}).get("chat") or ((update.get(key) or {}).get("message") or {}).get(
                        "chat")
                    if chat:
                        self.chats[int(chat["id"])] = chat
                self._updates.append(update)
        if self._loop is not None and self._wakeup is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        return ids

    def new_update_id(self) -> int:
        """Return a fresh update id (for updates posted to a webhook)."""
        return next(self._update_ids)

    def fail_next(self, method: str, *, status: int = 429, retry_after: int | None = 1,
                  description: str | None = None) -> None:
        """Answer the next call of `method` with an error (default: 429 Too Many Requests, retry after 1 s)."""
        body: dict[str, Any] = {"ok": False, "error_code": status,
                                "description": description or (f"Too Many Requests: retry after {retry_after}"
                                                               if status == 429 else "Bad Request")}
        if status == 429 and retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        with self._lock:
            self._failures.setdefault(method, []).append(body)

    def add_file(self, content: bytes, size: int | None = None) -> dict[str, Any]:
        """Store a file users can "send"; return the fields of its Document / PhotoSize (file_id, size)."""
        number = next(self._file_ids)
        file_id = f"BQACAgQAAxkBAAI{number:06d}"
        self.files[file_id] = content
        return {"file_id": file_id, "file_unique_id": f"AgAD{number:06d}", "file_size": size or len(content)}

    def calls_to(self, method: str, chat_id: int | None = None, since: int = 0) -> list[Call]:
        """Return the recorded calls of `method` (for one chat), from index `since` on."""
        with self._lock:
            calls = list(self.calls[since:])
        return [c for c in calls if c.method == method and (chat_id is None or c.chat_id == chat_id)]

    def mark(self) -> int:
        """Return the current position in `calls` (for `since=`)."""
        with self._lock:
            return len(self.calls)

    # ------------------------------------------------------------------ Bot API

    async def _method(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return JSONResponse({"ok": False, "error_code": 401, "description": "Unauthorized"}, status_code=401)
        method = request.path_params["method"]
        params, files = await self._parameters(request)
        if method == "getUpdates":
            self.polls += 1
            return self._ok(await self._get_updates(params))
        call = Call(method, params, files, at=time.monotonic())
        with self._lock:
            self.calls.append(call)
            failure = (self._failures.get(method) or [None]).pop(0) if self._failures.get(method) else None
        if failure is not None:
            call.status = failure["error_code"]
            return JSONResponse(failure, status_code=failure["error_code"])
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            call.status = 404
            return JSONResponse({"ok": False, "error_code": 404, "description": "Not Found"}, status_code=404)
        problem = markdown_v2_problem(params)
        if problem:
            call.status = 400
            return JSONResponse({"ok": False, "error_code": 400, "description": f"Bad Request: {problem}"},
                                status_code=400)
        result = handler(params, files)
        if isinstance(result, Response):
            call.status = result.status_code
            return result
        call.result = result
        return self._ok(result)

    @staticmethod
    def _ok(result: Any) -> JSONResponse:
        return JSONResponse({"ok": True, "result": result})

    @staticmethod
    async def _parameters(request: Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
        params: dict[str, Any] = {}
        files: dict[str, tuple[str, bytes]] = {}
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            raw = await request.json()
            return (raw if isinstance(raw, dict) else {}), files
        if request.method == "GET":
            items: list[tuple[str, Any]] = list(request.query_params.multi_items())
        else:
            form = await request.form()
            items = list(form.multi_items())
        for key, value in items:
            if isinstance(value, UploadFile):
                files[key] = (value.filename or "", await value.read())
                continue
            if key in JSON_PARAMS:
                params[key] = json.loads(value)
            elif key in INT_PARAMS and value.lstrip("-").isdigit():
                params[key] = int(value)
            else:
                params[key] = value
        return params, files

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        assert self._loop is not None and self._wakeup is not None
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        deadline = self._loop.time() + float(params.get("timeout") or 0)
        while True:
            self._wakeup.clear()
            with self._lock:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                ready = self._updates[:limit]
            remaining = deadline - self._loop.time()
            if ready or remaining <= 0 or self._closing:
                return ready
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                pass

    def _chat(self, chat_id: Any) -> dict[str, Any]:
        chat_id = int(chat_id)
        return self.chats.get(chat_id, {"id": chat_id, "type": "private", "first_name": "Test"})

    def _message(self, params: dict[str, Any], **content: Any) -> dict[str, Any]:
        message = {"message_id": next(self._message_ids), "date": int(time.time()),
                   "chat": self._chat(params["chat_id"]), "from": BOT_USER, **content}
        if isinstance(params.get("reply_markup"), dict) and params["reply_markup"].get("inline_keyboard"):
            message["reply_markup"] = params["reply_markup"]
        return message

    def _sent_file(self, params: dict[str, Any], files: dict[str, tuple[str, bytes]], field: str) -> dict[str, Any]:
        number = next(self._file_ids)
        if field in files:
            name, data = files[field]
        else:  # a file_id or URL string
            name, data = "", str(params.get(field, "")).encode()
        file_id = f"sent{number:06d}"
        self.files[file_id] = data
        return {"file_id": file_id, "file_unique_id": f"u{number:06d}", "file_size": len(data), "file_name": name}

    def _api_getMe(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        return BOT_USER

    def _api_sendMessage(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        return self._message(params, text=params.get("text", ""))

    def _api_sendPhoto(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        sent = self._sent_file(params, files, "photo")
        photo = [{"file_id": sent["file_id"], "file_unique_id": sent["file_unique_id"], "width": 320, "height": 320,
                  "file_size": sent["file_size"]}]
        extra = {"caption": params["caption"]} if params.get("caption") else {}
        return self._message(params, photo=photo, **extra)

    def _api_sendDocument(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        sent = self._sent_file(params, files, "document")
        extra = {"caption": params["caption"]} if params.get("caption") else {}
        return self._message(params, document=sent, **extra)

    def _api_editMessageText(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        return {**self._message(params, text=params.get("text", "")), "message_id": params["message_id"],
                "edit_date": int(time.time())}

    def _api_editMessageReplyMarkup(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        return {**self._message(params), "message_id": params["message_id"], "edit_date": int(time.time())}

    def _api_getFile(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        file_id = str(params.get("file_id"))
        if file_id not in self.files:
            return JSONResponse({"ok": False, "error_code": 400, "description": "Bad Request: invalid file_id"},
                                status_code=400)
        return {"file_id": file_id, "file_unique_id": "u" + file_id[-6:], "file_size": len(self.files[file_id]),
                "file_path": f"documents/{file_id}.bin"}

    async def _download(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return Response(status_code=401)
        path = request.path_params["path"]
        file_id = path.removeprefix("documents/").removesuffix(".bin")
        with self._lock:
            self.calls.append(Call("download", {"file_path": path}, at=time.monotonic()))
        if file_id not in self.files:
            return Response(status_code=404)
        return Response(self.files[file_id], media_type="application/octet-stream")

    def _true(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        return True

    _api_answerCallbackQuery = _true
    _api_deleteMessage = _true
    _api_setMyCommands = _true
    _api_deleteMyCommands = _true
    _api_deleteWebhook = _true
    _api_setWebhook = _true
    _api_sendChatAction = _true
    _api_leaveChat = _true

    def _api_getWebhookInfo(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        return {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
