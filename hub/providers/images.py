"""Images: an OpenAI-compatible images API, or a local SDXL/FLUX server (the A1111/Forge API).

`kind = "openai"`: `POST <base_url>/images/generations` through the `openai` package (imported
only when configured) → `data[0].b64_json` or `data[0].url`. `kind = "sdxl"`:
`POST <base_url>/sdapi/v1/txt2img` `{"prompt", "negative_prompt", "width", "height", "steps",
"seed"}` → `{"images": ["<base64 PNG>", ...]}`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from hub.errors import ProviderError
from hub.providers.generation import (
    GeneratedImage,
    ImageProvider,
    ProviderSession,
    message_in,
    request_json,
    retryable_status,
)
from hub.settings import ImageSettings


def build_image_provider(settings: ImageSettings) -> ImageProvider:
    return OpenAIImages(settings) if settings.kind == "openai" else SdxlImages(settings)


def _decode(b64: str, what: str) -> bytes:
    try:
        return base64.b64decode(b64, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ProviderError(f"{what}: the image is not valid base64", retryable=True) from exc


class OpenAIImages:
    name = "image"

    def __init__(self, settings: ImageSettings) -> None:
        self._settings = settings
        self._model = settings.model
        self.timeout_s = settings.timeout_s
        self.job_after_s = settings.job_after_s
        self._client: Any = None

    async def start(self) -> None:
        from openai import AsyncOpenAI

        key = self._settings.api_key.get_secret_value() if self._settings.api_key else "none"
        # No client-side retries: a failure is the poller's to back off from.
        self._client = AsyncOpenAI(base_url=self._settings.base_url, api_key=key, max_retries=0, timeout=self.timeout_s)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def generate(self, prompt: str) -> GeneratedImage:
        import openai

        assert self._client is not None, "provider not started"
        kwargs: dict[str, Any] = {"prompt": prompt, "n": 1}
        if self._model:
            kwargs["model"] = self._model
        try:
            answer = await self._client.images.generate(**kwargs)
        except openai.APIStatusError as exc:
            reason = message_in(exc.body) or exc.message
            raise ProviderError(
                f"images: HTTP {exc.status_code}: {reason}", retryable=retryable_status(exc.status_code)
            ) from exc
        except openai.APIError as exc:  # connection trouble, timeouts
            raise ProviderError(f"images: {type(exc).__name__}: {exc}", retryable=True) from exc
        data = getattr(answer, "data", None) or []
        if not data:
            raise ProviderError("images: the answer has no image", retryable=False)
        first = data[0]
        if getattr(first, "b64_json", None):
            return GeneratedImage(data=_decode(first.b64_json, "images"))
        if getattr(first, "url", None):
            return GeneratedImage(url=str(first.url))
        raise ProviderError("images: the answer has neither b64_json nor url", retryable=False)


class SdxlImages:
    name = "image"

    def __init__(self, settings: ImageSettings) -> None:
        self._base = settings.base_url
        self.timeout_s = settings.timeout_s
        self.job_after_s = settings.job_after_s
        self._session = ProviderSession(settings.api_key)

    async def start(self) -> None:
        await self._session.start()

    async def close(self) -> None:
        await self._session.close()

    async def generate(self, prompt: str) -> GeneratedImage:
        body = {"prompt": prompt, "negative_prompt": "", "width": 1024, "height": 1024, "steps": 30, "seed": -1}
        data = await request_json(
            self._session.http,
            "POST",
            f"{self._base}/sdapi/v1/txt2img",
            json=body,
            what="txt2img",
            timeout_s=self.timeout_s,
        )
        images = data.get("images") if isinstance(data, dict) else None
        if not images or not isinstance(images[0], str):
            raise ProviderError("txt2img: the answer has no image", retryable=False)
        return GeneratedImage(data=_decode(images[0], "txt2img"))
