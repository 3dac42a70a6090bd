"""A fake Telegram Bot API server on 127.0.0.1, and sample updates.

It answers `POST /bot<token>/<method>` like the Bot API (`{"ok": true, "result": ...}`), records
every call with its parameters (JSON-encoded fields decoded) and uploaded files (multipart), and
can be scripted per method: an error answer (500, 429 with `parameters.retry_after`, 403
"Forbidden: bot was blocked by the user", ...) or a hold (the request is never answered). It
serves getUpdates (with offsets and a short long-poll), getFile and file downloads, and keeps
the webhook registration. Run it as a process for benchmarks:
`python tests/fake_telegram.py [--port N] [--quiet]` prints its URL; `GET /_fake/stats` counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
BOT_ID = 123456789
BOT_USERNAME = "HubTestBot"
USER = {"id": 1111111, "is_bot": False, "first_name": "Test", "last_name": "Test Lastname", "username": "Test"}
# Parameters the Bot API takes as JSON-serialised strings in form posts.
JSON_FIELDS = {
    "reply_parameters",
    "allowed_updates",
    "reply_markup",
    "entities",
    "caption_entities",
    "link_preview_options",
}


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    data: bytes
    content_type: str


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, Upload] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)
    # ok / error answer given; False while held or when the client went away first.
    answered: bool = False
    ok: bool = False

    def file(self, name: str) -> Upload | None:
        """The upload a parameter points to (`attach://<key>`), if any."""
        value = self.params.get(name)
        if isinstance(value, str) and value.startswith("attach://"):
            return self.files.get(value[len("attach://") :])
        return None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


def error(code: int, description: str, **parameters: Any) -> Answer:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Answer(code, body)


SERVER_ERROR = error(500, "Internal Server Error")
BLOCKED = error(403, "Forbidden: bot was blocked by the user")
CHAT_NOT_FOUND = error(400, "Bad Request: chat not found")
TOO_LARGE = error(413, "Request Entity Too Large")


def too_many(retry_after: int) -> Answer:
    return error(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)


def migrated(to_chat_id: int) -> Answer:
    return error(400, "Bad Request: group chat was upgraded to a supergroup chat", migrate_to_chat_id=to_chat_id)


HOLD = "hold"


class FakeTelegram:
    def __init__(self, *, token: str = TOKEN, username: str = BOT_USERNAME, record: bool = True) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.username = username
        self.record = record
        self.calls_: list[Call] = []
        self.counts: Counter[str] = Counter()
        self.first_at: dict[str, float] = {}
        self.last_at: dict[str, float] = {}
        self.webhook: dict[str, Any] = {}
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id → (file_path, bytes)
        # (chat_id, user_id) → getChatMember status; anyone else is a "member".
        self.members: dict[tuple[str, str], str] = {}
        self.poll_hold_s = 0.3
        self._scripts: dict[str, list[Answer | str]] = {}
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 500_000_000
        self._message_ids = itertools.count(1000)
        self._texts: dict[tuple[str, int], str] = {}
        self._released = asyncio.Event()
        self._pushed = asyncio.Event()
        self.changed = asyncio.Event()
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        app.router.add_get("/_fake/stats", self._stats)
        self._app = app
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- test controls --------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        self._released.set()
        if self._runner:
            await self._runner.cleanup()

    def script(self, method: str, *answers: Answer | str) -> None:
        """The next calls of `method` get these answers (an Answer, or HOLD), then normal ones."""
        self._scripts.setdefault(method, []).extend(answers)

    def hold(self, method: str, n: int = 10_000) -> None:
        """Hold the next `n` calls of `method` open, unanswered, until `release()`."""
        self.script(method, *([HOLD] * n))

    def release(self) -> None:
        """Let held calls go (as if they had failed: they count as not answered) and stop holding."""
        for method, answers in list(self._scripts.items()):
            self._scripts[method] = [a for a in answers if a != HOLD]
        self._released.set()

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates (an update_id is given when missing)."""
        if "update_id" not in update:
            update = {"update_id": self._next_update_id, **update}
        self._next_update_id = max(self._next_update_id, update["update_id"]) + 1
        self._updates.append(update)
        self._pushed.set()
        self._touch()
        return update

    def set_member(self, chat_id: int, user_id: int, status: str) -> None:
        """What getChatMember says of a user: creator, administrator, member, restricted, left, kicked."""
        self.members[(str(chat_id), str(user_id))] = status

    def add_file(self, file_id: str, data: bytes, file_path: str = "") -> None:
        self.files[file_id] = (file_path or f"documents/{file_id}.bin", data)

    def calls(self, method: str | None = None) -> list[Call]:
        return [c for c in self.calls_ if method is None or c.method == method]

    def delivered(self, method: str = "sendMessage") -> list[Call]:
        """Calls that got a successful answer: what really reached the chat."""
        return [c for c in self.calls(method) if c.ok]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                seen = [(c.method, c.params.get("chat_id")) for c in self.calls_][-20:]
                raise AssertionError(f"condition not met within {timeout}s; last calls: {seen}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=0.05)
            except TimeoutError:
                pass

    def _touch(self) -> None:
        self.changed.set()

    # --- the API --------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        now = time.monotonic()
        self.counts[method] += 1
        self.first_at.setdefault(method, time.time())
        self.last_at[method] = time.time()
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        params, files = await _read_params(request)
        call = Call(method, params, files, now)
        if self.record:
            self.calls_.append(call)
        self._touch()
        scripted = self._scripts.get(method)
        if scripted:
            answer = scripted.pop(0)
            if answer == HOLD:
                await self._released.wait()
                self._touch()
                return web.json_response(SERVER_ERROR.body, status=500)
            assert isinstance(answer, Answer)
            call.answered = True
            self._touch()
            return web.json_response(answer.body, status=answer.status)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            answer = error(404, "Not Found: method not found")
        else:
            result = handler(params, files)
            if asyncio.iscoroutine(result):
                result = await result
            answer = result if isinstance(result, Answer) else Answer(200, {"ok": True, "result": result})
        call.answered = True
        call.ok = answer.status == 200
        self._touch()
        return web.json_response(answer.body, status=answer.status)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        for file_path, data in self.files.values():
            if file_path == path:
                return web.Response(body=data, content_type="application/octet-stream")
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"counts": dict(self.counts), "first_at": self.first_at, "last_at": self.last_at})

    # --- methods --------------------------------------------------------------------------

    def _me(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Hub Test Bot",
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _m_getMe(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        return self._me()

    def _message(self, p: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat_id = p.get("chat_id", "0")
        mid = next(self._message_ids)
        msg: dict[str, Any] = {
            "message_id": mid,
            "from": self._me(),
            "chat": _chat(chat_id),
            "date": int(time.time()),
            **content,
        }
        if p.get("caption"):
            msg["caption"] = p["caption"]
        if p.get("message_thread_id"):
            msg["message_thread_id"] = int(p["message_thread_id"])
        if "text" in content:
            self._texts[(str(chat_id), mid)] = content["text"]
        return msg

    def _m_sendMessage(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        text = p.get("text") or ""
        if not text.strip():
            return error(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            return error(400, "Bad Request: message is too long")
        return self._message(p, text=text)

    def _stored(self, p: dict[str, Any], f: dict[str, Upload], name: str) -> dict[str, Any]:
        value = p.get(name, "")
        size = 0
        if isinstance(value, str) and value.startswith("attach://"):
            upload = f[value[len("attach://") :]]
            file_id = f"{name}-{secrets.token_hex(6)}"
            self.add_file(file_id, upload.data, f"{name}s/{upload.filename}")
            size = len(upload.data)
        else:
            file_id = str(value)
        return {"file_id": file_id, "file_unique_id": file_id[-10:], "file_size": size}

    def _m_sendPhoto(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        return self._message(p, photo=[{**self._stored(p, f, "photo"), "width": 800, "height": 600}])

    def _m_sendVideo(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        return self._message(p, video={**self._stored(p, f, "video"), "width": 640, "height": 360, "duration": 5})

    def _m_sendAudio(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        return self._message(p, audio={**self._stored(p, f, "audio"), "duration": 30})

    def _m_sendVoice(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        return self._message(p, voice={**self._stored(p, f, "voice"), "duration": 5})

    def _m_sendDocument(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        return self._message(p, document=self._stored(p, f, "document"))

    def _m_editMessageText(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        key = (str(p.get("chat_id")), int(p.get("message_id", 0)))
        if key not in self._texts:
            return error(400, "Bad Request: message to edit not found")
        if self._texts[key] == p.get("text"):
            return error(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        self._texts[key] = p.get("text", "")
        return {
            "message_id": key[1],
            "from": self._me(),
            "chat": _chat(key[0]),
            "date": int(time.time()),
            "edit_date": int(time.time()),
            "text": self._texts[key],
        }

    def _m_sendChatAction(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        return True

    def _m_getFile(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        file_id = p.get("file_id", "")
        if file_id not in self.files:
            return error(400, "Bad Request: invalid file_id")
        path, data = self.files[file_id]
        return {"file_id": file_id, "file_unique_id": file_id[-10:], "file_size": len(data), "file_path": path}

    def _m_getChatMember(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        chat_id, user_id = str(p.get("chat_id", "")), str(p.get("user_id", ""))
        if not chat_id.lstrip("-").isdigit() or not user_id.isdigit():
            return error(400, "Bad Request: invalid user_id specified")
        status = self.members.get((chat_id, user_id), "member")
        member: dict[str, Any] = {"status": status, "user": {**USER, "id": int(user_id)}}
        if status == "creator":
            member["is_anonymous"] = False
        elif status == "administrator":
            flags = ("can_be_edited", "can_manage_chat", "can_delete_messages", "can_restrict_members")
            member.update({"is_anonymous": False, **{flag: flag != "can_be_edited" for flag in flags}})
        return member

    def _m_setWebhook(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        if not p.get("url"):
            return error(400, "Bad Request: bad webhook: URL must be non-empty")
        self.webhook = {
            "url": p["url"],
            "secret_token": p.get("secret_token"),
            "allowed_updates": p.get("allowed_updates"),
        }
        return True

    def _m_deleteWebhook(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        self.webhook = {}
        return True

    def _m_getWebhookInfo(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        return {"url": self.webhook.get("url", ""), "has_custom_certificate": False, "pending_update_count": 0}

    async def _m_getUpdates(self, p: dict[str, Any], f: dict[str, Upload]) -> Any:
        if self.webhook:
            return error(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(p.get("offset") or 0)
        if offset:
            # Like Telegram: asking from an offset confirms every update before it.
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates:
            # A short long-poll: answer when an update is pushed, or empty after a moment.
            self._pushed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pushed.wait(), min(float(p.get("timeout") or 0), self.poll_hold_s))
        return self._updates[: int(p.get("limit") or 100)]


def _chat(chat_id: Any) -> dict[str, Any]:
    cid = int(chat_id)
    if cid > 0:
        return {"id": cid, "type": "private", "first_name": "Test"}
    kind = "supergroup" if str(cid).startswith("-100") else "group"
    return {"id": cid, "type": kind, "title": "Test group"}


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, Upload]]:
    params: dict[str, Any] = {}
    files: dict[str, Upload] = {}
    ctype = request.content_type
    if ctype == "application/json":
        # Record JSON calls the way a form carries them: scalars as text, structures decoded.
        body = await request.json()
        for key, value in (body or {}).items():
            keep = key in JSON_FIELDS or isinstance(value, str)
            params[key] = value if keep else json.dumps(value)
        return params, files
    form = await request.post()
    for key, value in form.items():
        if isinstance(value, web.FileField):
            files[key] = Upload(value.filename, value.file.read(), value.content_type)
        else:
            params[key] = value
    for key in JSON_FIELDS & params.keys():
        try:
            params[key] = json.loads(params[key])
        except ValueError:
            pass
    return params, files


# --- sample updates ------------------------------------------------------------------------------
# Shapes from the Bot API's webhook guide samples ("Message with text", "Message with a reply",
# "Voice message", "Document message", ...), with the fields today's API always sends
# (chat.type, from.is_bot, file_unique_id).

_ids = itertools.count(10000)
_mids = itertools.count(1365)


def message_update(
    text: str | None = "/start",
    *,
    chat_id: int = 1111111,
    chat_type: str | None = None,
    from_user: dict[str, Any] | None = None,
    update_id: int | None = None,
    message_id: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    chat = _chat(chat_id) if chat_type is None else {**_chat(chat_id), "type": chat_type}
    message: dict[str, Any] = {
        "date": 1441645532,
        "chat": {**chat, **({"username": "Test", "last_name": "Test Lastname"} if chat["type"] == "private" else {})},
        "message_id": message_id if message_id is not None else next(_mids),
        "from": from_user or USER,
    }
    if text is not None:
        message["text"] = text
    message.update(fields)
    return {"update_id": update_id if update_id is not None else next(_ids), "message": message}


def command_entity(text: str) -> list[dict[str, Any]]:
    head = text.split(" ", 1)[0]
    return [{"type": "bot_command", "offset": 0, "length": len(head.encode("utf-16-le")) // 2}]


def mention_entity(text: str, mention: str) -> dict[str, Any]:
    before = text.index(mention)
    return {
        "type": "mention",
        "offset": len(text[:before].encode("utf-16-le")) // 2,
        "length": len(mention.encode("utf-16-le")) // 2,
    }


VOICE = {
    "file_id": "AwADBAADbXXXXXXXXXXXGBdhD2l6_XX",
    "file_unique_id": "AgADbXXX",
    "duration": 5,
    "mime_type": "audio/ogg",
    "file_size": 23000,
}
DOCUMENT = {
    "file_id": "AwADBAADbXXXXXXXXXXXGBdhD2l6_XX",
    "file_unique_id": "AgADbXXX",
    "file_name": "Testfile.pdf",
    "mime_type": "application/pdf",
    "file_size": 536392,
}
AUDIO = {
    "file_id": "AwADBAADbXXXXXXXXXXXGBdhD2l6_XX",
    "file_unique_id": "AgADbXXX",
    "duration": 243,
    "mime_type": "audio/mpeg",
    "file_size": 3897500,
    "title": "Test music file",
}


# --- driving a hub ---------------------------------------------------------------------------------

SECRET = "test-secret_token-42"


def telegram_toml(api_base: str, *, mode: str = "webhook", public_url: str | None = None, extra: str = "") -> str:
    # A public URL puts the web chat on the internet: it then needs its token.
    http = f'[http]\npublic_url = "{public_url}"\n[web]\ntoken = "test-web-token"\n' if public_url else ""
    return (
        f'{http}[telegram]\nenabled = true\ntoken = "{TOKEN}"\nsecret_token = "{SECRET}"\n'
        f'mode = "{mode}"\napi_base = "{api_base}"\n{extra}'
    )


async def post_update(url: str, update: Any, *, secret: str | None = SECRET, raw: bytes | None = None) -> int:
    """POST one update to the hub's webhook, as Telegram does; returns the status."""
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    data = raw if raw is not None else json.dumps(update).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/webhooks/telegram", data=data, headers=headers) as resp:
            await resp.read()
            return resp.status


async def _serve(port: int, quiet: bool) -> None:
    fake = FakeTelegram(record=not quiet)
    url = await fake.start(port)
    print(f"fake Telegram listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A fake Telegram Bot API server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="count calls, keep no records (benchmarks)")
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.port, args.quiet))
    except KeyboardInterrupt:
        sys.exit(0)
