"""aiogram's aiohttp session, made cheaper per call: JSON bodies, answer types built once.

aiogram posts every call as a form (URL-encoding the whole body in Python) and parametrises
its generic `Response[...]` answer model per call, which pydantic rebuilds whenever its weak
cache has let go of it. The Bot API takes JSON bodies as well; uploads still go as multipart
through aiogram's own path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiohttp import ClientError, ClientTimeout

if TYPE_CHECKING:
    from aiogram.client.bot import Bot
    from aiogram.types import InputFile


class JsonSession(AiohttpSession):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Strong references: a parametrised model built once stays built.
        self._answer_types: dict[Any, Any] = {}

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
        session = await self.create_session()
        url = self.api.api_url(token=bot.token, method=method.__api_method__)
        try:
            async with session.post(
                url,
                data=self.json_dumps(payload),
                headers={"Content-Type": "application/json"},
                timeout=ClientTimeout(total=self.timeout if timeout is None else timeout),
            ) as resp:
                raw = await resp.text()
        except TimeoutError as exc:
            raise TelegramNetworkError(method=method, message="Request timeout error") from exc
        except ClientError as exc:
            raise TelegramNetworkError(method=method, message=f"{type(exc).__name__}: {exc}") from exc
        response = self.check_response(bot=bot, method=method, status_code=resp.status, content=raw)
        return cast(TelegramType, response.result)

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
