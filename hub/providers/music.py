"""Music through a Suno-style gateway: generate → clip ids; get by ids → status and audio URL.

`POST <base_url>/api/generate` `{"prompt", "make_instrumental", "model", "wait_audio": false}`
→ an array of clips `{"id", "status", ...}`; `GET <base_url>/api/get?ids=a,b` → the clips with
`status` `submitted` | `queue` | `streaming` | `complete` | `error` and `audio_url`. The job is
done when a clip is `complete` (`streaming` has a playable URL but not the final file).
"""

from __future__ import annotations

from typing import Any

from hub.errors import ProviderError
from hub.providers.generation import Poll, ProviderSession, request_json
from hub.settings import MusicSettings


class SunoMusic:
    name = "music"
    media = "audio"

    def __init__(self, settings: MusicSettings) -> None:
        self._base = settings.base_url
        self._model = settings.model
        self.poll_interval_s = settings.poll_interval_s
        self.timeout_s = settings.timeout_s
        self._session = ProviderSession(settings.api_key)

    async def start(self) -> None:
        await self._session.start()

    async def close(self) -> None:
        await self._session.close()

    async def submit(self, prompt: str) -> str:
        body: dict[str, Any] = {"prompt": prompt, "make_instrumental": False, "wait_audio": False}
        if self._model:
            body["model"] = self._model
        data = await request_json(
            self._session.http, "POST", f"{self._base}/api/generate", json=body, what="music generate"
        )
        clips = data if isinstance(data, list) else (data.get("data") if isinstance(data, dict) else None)
        ids = [str(c["id"]) for c in clips or () if isinstance(c, dict) and c.get("id")]
        if not ids:
            raise ProviderError(f"music generate: no clip ids in {str(data)[:200]}", retryable=True)
        # The provider job id is the clip ids, as the gateway's get endpoint takes them.
        return ",".join(ids)

    async def poll(self, provider_job_id: str) -> Poll:
        data = await request_json(
            self._session.http, "GET", f"{self._base}/api/get", params={"ids": provider_job_id}, what="music get"
        )
        clips = [c for c in (data if isinstance(data, list) else ()) if isinstance(c, dict)]
        if not clips:
            raise ProviderError(f"music get: no clips in {str(data)[:200]}", retryable=True)
        statuses = [str(c.get("status", "")).lower() for c in clips]
        for clip, status in zip(clips, statuses, strict=True):
            if status == "complete" and clip.get("audio_url"):
                return Poll("completed", url=str(clip["audio_url"]))
        if all(s == "error" for s in statuses):
            messages = [str(c.get("error_message") or c.get("errorMessage") or "") for c in clips]
            return Poll("failed", error=next((m for m in messages if m), "the music service reported an error"))
        if any(s == "streaming" for s in statuses):
            return Poll("running")
        return Poll("queued")
