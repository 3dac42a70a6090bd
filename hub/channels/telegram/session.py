"""aiogram's aiohttp session, made cheaper per call: JSON bodies, answer types built once.

aiogram posts every call as a form (URL-encoding the whole body in Python) and parametrises
its generic `Response[...]` answer model per call, which pydantic rebuilds whenever its weak
cache has let go of it. The Bot API takes JSON bodies as well; uploads still go as multipart
through aiogram's own path. A text message, the reply nearly every event gets, skips aiogram's
models altogether (`send_text`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods import Response, SendMessage, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import Message as TgMessage
from aiogram.types import ReplyParameters
from aiohttp import ClientError, ClientTimeout
from yarl import URL

from hub import jsoncodec

if TYPE_CHECKING:
    from aiogram.client.bot import Bot
    from aiogram.types import InputFile

_JSON = {"Content-Type": "application/json"}


class JsonSession(AiohttpSession):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(json_loads=jsoncodec.loads, json_dumps=jsoncodec.dumps, **kwargs)
        # Strong references: a parametrised model built once stays built.
        self._answer_types: dict[Any, Any] = {}
        self._urls: dict[tuple[str, str], URL] = {}
        self._timeout = ClientTimeout(total=self.timeout)

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature
    ) -> TelegramType:
        files: dict[str, InputFile] = {}
        payload: dict[str, Any] = {}
        for key, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            if prepared is not None:
                payload[key] = prepared
        if files:
            return await super().make_request(bot, method, timeout)
        status, raw = await self._post(bot, method.__api_method__, payload, timeout, lambda: method)
        response = self.check_response(bot=bot, method=method, status_code=status, content=_text(raw))
        return cast(TelegramType, response.result)

    async def send_text(
        self, bot: Bot, chat_id: int | str, text: str, thread: int | None, reply: ReplyParameters | None
    ) -> int:
        """sendMessage without aiogram's models: the body built by hand, and of the answer only
        `message_id` read. What is not a plain success (an error, an odd answer) takes aiogram's
        own check, so it raises the same exceptions."""
        payload: dict[str, Any] = {"chat_id": chat_id, "text": text}
        if thread is not None:
            payload["message_thread_id"] = thread
        if reply is not None:
            payload["reply_parameters"] = {
                "message_id": reply.message_id,
                "allow_sending_without_reply": reply.allow_sending_without_reply,
            }

        def method() -> SendMessage:
            return SendMessage(chat_id=chat_id, text=text, message_thread_id=thread, reply_parameters=reply)

        status, raw = await self._post(bot, "sendMessage", payload, None, method)
        if 200 <= status <= 226:
            try:
                data = jsoncodec.loads(raw)
            except ValueError:
                data = None
            if isinstance(data, dict) and data.get("ok") is True and isinstance(data.get("result"), dict):
                message_id = data["result"].get("message_id")
                if isinstance(message_id, int) and not isinstance(message_id, bool):
                    return message_id
        answer = self.check_response(bot=bot, method=method(), status_code=status, content=_text(raw))
        sent = cast(TgMessage, answer.result)
        return sent.message_id

    async def _post(
        self,
        bot: Bot,
        api_method: str,
        payload: dict[str, Any],
        total_s: float | None,
        method: Callable[[], TelegramMethod[Any]],
    ) -> tuple[int, bytes]:
        session = await self.create_session()
        url = self._urls.get((bot.token, api_method))
        if url is None:
            # Parsed once per method, not per call.
            url = self._urls[bot.token, api_method] = URL(self.api.api_url(token=bot.token, method=api_method))
        try:
            async with session.post(
                url,
                data=jsoncodec.dumps_bytes(payload),
                headers=_JSON,
                timeout=self._timeout if total_s is None else ClientTimeout(total=total_s),
            ) as resp:
                return resp.status, await resp.read()
        except TimeoutError as exc:
            raise TelegramNetworkError(method=method(), message="Request timeout error") from exc
        except ClientError as exc:
            raise TelegramNetworkError(method=method(), message=f"{type(exc).__name__}: {exc}") from exc

    def check_response(
        self, bot: Bot, method: TelegramMethod[TelegramType], status_code: int, content: str
    ) -> Response[TelegramType]:
        if 200 <= status_code <= 226:
            try:
                data = self.json_loads(content)
            except ValueError:
                data = None
            if isinstance(data, dict) and data.get("ok") is True:
                answer = self._answer_types.get(method.__returning__)
                if answer is None:
                    answer = self._answer_types[method.__returning__] = Response[method.__returning__]  # type: ignore[name-defined]
                try:
                    return cast(Response[TelegramType], answer.model_validate(data, context={"bot": bot}))
                except ValueError:
                    pass  # let aiogram's own check report it
        # Errors (and anything odd) take aiogram's path, which maps them to its exceptions.
        return super().check_response(bot=bot, method=method, status_code=status_code, content=content)


def _text(raw: bytes) -> str:
    """The Bot API answers UTF-8 JSON; aiogram's checks take text."""
    return raw.decode("utf-8", "replace")
