"""Hunyuan video (TokenHub): submit a prompt, then query the job until completed or failed.

`POST <base_url>/v1/api/video/submit` `{"model", "prompt"}` → `{"id", "status": "queued"}`;
`POST <base_url>/v1/api/video/query` `{"model", "id"}` → `queued` | `in_progress` (some
deployments say `running`) | `completed` with `data.url` | `failed` with `error.message`.
Requests carry `Authorization: Bearer <api_key>` and `X-API-Key-Id: <key_id>`.
"""

from __future__ import annotations

from typing import Any

from hub.errors import ProviderError
from hub.providers.generation import Poll, ProviderSession, message_in, request_json
from hub.settings import HunyuanSettings

QUEUED = {"queued", "pending", "submitted", "wait"}
RUNNING = {"in_progress", "running", "processing", "run"}


class HunyuanVideo:
    name = "hunyuan"
    media = "video"

    def __init__(self, settings: HunyuanSettings) -> None:
        self._base = settings.base_url
        self._model = settings.model or "hy-video-1.5"
        self.poll_interval_s = settings.poll_interval_s
        self.timeout_s = settings.timeout_s
        self._session = ProviderSession(
            settings.api_key, **({"X-API-Key-Id": settings.key_id} if settings.key_id else {})
        )

    async def start(self) -> None:
        await self._session.start()

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        data = await request_json(self._session.http, "POST", f"{self._base}{path}", json=body, what=what)
        if not isinstance(data, dict):
            raise ProviderError(f"{what}: unexpected answer {str(data)[:200]}", retryable=True)
        return data

    async def submit(self, prompt: str) -> str:
        data = await self._call("/v1/api/video/submit", {"model": self._model, "prompt": prompt}, "hunyuan submit")
        job_id = data.get("id")
        if not job_id:
            status = str(data.get("status", "")).lower()
            if status == "failed":
                raise ProviderError(f"hunyuan refused the prompt: {_failure(data)}", retryable=False)
            raise ProviderError(f"hunyuan submit: no job id in {str(data)[:200]}", retryable=True)
        return str(job_id)

    async def poll(self, provider_job_id: str) -> Poll:
        data = await self._call("/v1/api/video/query", {"model": self._model, "id": provider_job_id}, "hunyuan query")
        status = str(data.get("status", "")).lower()
        progress = data.get("progress")
        progress = int(progress) if isinstance(progress, int | float) else None
        if status in QUEUED:
            return Poll("queued", progress=progress)
        if status in RUNNING:
            return Poll("running", progress=progress)
        if status in ("completed", "succeeded", "success", "done"):
            result = data.get("data") or {}
            url = result.get("url") if isinstance(result, dict) else None
            if not url:
                return Poll("failed", error="the provider finished but gave no video URL")
            return Poll("completed", url=str(url), progress=100)
        # Any other status is a final failure, with the response's message.
        return Poll("failed", error=_failure(data))


def _failure(data: dict[str, Any]) -> str:
    return message_in(data) or f"status {data.get('status')!r}"
