"""Fake generation backends on 127.0.0.1, speaking the protocols in REFERENCE.md.

Each is a FakeServer (it records every request) with the provider's routes. A job's fate is
set by its prompt: one containing `[fail]` fails, `[never]` never finishes; any other finishes
after `queued_s` in the queue and `running_s` running. `errors(n)` makes the next n status
calls answer 503 (a transient error). Results are served by the same server under `/files/`,
each file's bytes naming the job, so a test can tell which result reached which chat.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web
from harness import FakeServer, Recorded

HUNYUAN_KEY = "sk-test-hunyuan"
HUNYUAN_KEY_ID = "ak-test-hunyuan"
MUSIC_KEY = "music-test-key"
IMAGE_KEY = "image-test-key"
# The smallest valid PNG (1×1, transparent): what the image fakes return.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def video_bytes(job_id: str) -> bytes:
    return b"\x00\x00\x00\x18ftypmp42" + f"fake video {job_id}".encode()


def audio_bytes(clip_id: str) -> bytes:
    return b"ID3\x04\x00" + f"fake audio {clip_id}".encode()


@dataclass
class _Job:
    prompt: str
    created: float = field(default_factory=time.monotonic)


def _fate(prompt: str) -> str:
    if "[fail]" in prompt:
        return "fail"
    if "[never]" in prompt:
        return "never"
    return "ok"


class _Fake:
    def __init__(self, *, queued_s: float = 0.2, running_s: float = 0.3) -> None:
        self.server = FakeServer()
        self.queued_s = queued_s
        self.running_s = running_s
        self.jobs: dict[str, _Job] = {}
        self._errors = 0

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> str:
        return await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def errors(self, n: int) -> None:
        """The next n status calls answer 503."""
        self._errors += n

    def _take_error(self) -> web.Response | None:
        if self._errors > 0:
            self._errors -= 1
            return web.json_response({"error": {"message": "temporarily overloaded"}}, status=503)
        return None

    def _phase(self, job: _Job) -> str:
        fate = _fate(job.prompt)
        age = time.monotonic() - job.created
        if age < self.queued_s:
            return "queued"
        if fate == "never" or age < self.queued_s + self.running_s:
            return "running"
        return "failed" if fate == "fail" else "done"


class FakeHunyuan(_Fake):
    """`POST /v1/api/video/submit` and `/v1/api/video/query`, Bearer key + X-API-Key-Id."""

    def __init__(self, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self._ids = itertools.count(1452550001)
        self.server.on("POST", "/v1/api/video/submit", self._submit)
        self.server.on("POST", "/v1/api/video/query", self._query)
        self.server.on("GET", "/files/{name}", self._file)

    def _auth_error(self, rec: Recorded) -> web.Response | None:
        if (
            rec.headers.get("Authorization") != f"Bearer {HUNYUAN_KEY}"
            or rec.headers.get("X-API-Key-Id") != HUNYUAN_KEY_ID
        ):
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        return None

    def _submit(self, rec: Recorded) -> web.Response:
        if (denied := self._auth_error(rec)) is not None:
            return denied
        body = rec.json or {}
        if body.get("model") != "hy-video-1.5" or not body.get("prompt"):
            return web.json_response({"error": {"message": "model and prompt are required"}}, status=400)
        job_id = str(next(self._ids))
        self.jobs[job_id] = _Job(str(body["prompt"]))
        return web.json_response(
            {
                "id": job_id,
                "request_id": uuid.uuid4().hex,
                "object": "video.generation.job",
                "created_at": int(time.time()),
                "status": "queued",
            }
        )

    def _query(self, rec: Recorded) -> web.Response:
        if (denied := self._auth_error(rec)) is not None:
            return denied
        if (err := self._take_error()) is not None:
            return err
        body = rec.json or {}
        job = self.jobs.get(str(body.get("id")))
        if job is None:
            return web.json_response({"error": {"message": "job not found"}}, status=404)
        phase = self._phase(job)
        if phase == "queued":
            return web.json_response({"id": body["id"], "status": "queued"})
        if phase == "running":
            return web.json_response({"id": body["id"], "status": "in_progress", "progress": 40})
        if phase == "failed":
            return web.json_response(
                {"id": body["id"], "status": "failed", "error": {"code": "content_policy", "message": "prompt refused"}}
            )
        return web.json_response(
            {
                "id": body["id"],
                "status": "completed",
                "progress": 100,
                "data": {"url": f"{self.url}/files/{body['id']}.mp4"},
            }
        )

    def _file(self, rec: Recorded) -> web.Response:
        job_id = rec.path.rsplit("/", 1)[1].split(".")[0]
        if job_id not in self.jobs:
            return web.Response(status=404)
        return web.Response(body=video_bytes(job_id), content_type="video/mp4")

    def submits(self) -> list[Recorded]:
        return self.server.calls("/v1/api/video/submit")


class FakeMusic(_Fake):
    """A Suno-style gateway: `POST /api/generate`, `GET /api/get?ids=`."""

    def __init__(self, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.server.on("POST", "/api/generate", self._generate)
        self.server.on("GET", "/api/get", self._get)
        self.server.on("GET", "/files/{name}", self._file)

    def _generate(self, rec: Recorded) -> web.Response:
        if rec.headers.get("Authorization") != f"Bearer {MUSIC_KEY}":
            return web.json_response({"detail": "unauthorized"}, status=401)
        body = rec.json or {}
        if not body.get("prompt") or body.get("wait_audio") is not False:
            return web.json_response({"detail": "prompt required, wait_audio false"}, status=400)
        base = uuid.uuid4().hex[:12]
        clips = []
        for n in (1, 2):
            clip_id = f"{base}-{n}"
            self.jobs[clip_id] = _Job(str(body["prompt"]))
            clips.append({"id": clip_id, "status": "submitted", "title": "", "audio_url": ""})
        return web.json_response(clips)

    def _get(self, rec: Recorded) -> web.Response:
        if (err := self._take_error()) is not None:
            return err
        out = []
        for clip_id in rec.query.get("ids", "").split(","):
            job = self.jobs.get(clip_id)
            if job is None:
                continue
            phase = self._phase(job)
            clip = {"id": clip_id, "title": job.prompt[:20], "audio_url": "", "error_message": None}
            if phase == "queued":
                clip["status"] = "queue"
            elif phase == "running":
                clip.update(status="streaming", audio_url=f"{self.url}/files/{clip_id}.stream")
            elif phase == "failed":
                clip.update(status="error", error_message="the music model refused the prompt")
            else:
                clip.update(status="complete", audio_url=f"{self.url}/files/{clip_id}.mp3")
            out.append(clip)
        return web.json_response(out)

    def _file(self, rec: Recorded) -> web.Response:
        clip_id = rec.path.rsplit("/", 1)[1].split(".")[0]
        if clip_id not in self.jobs:
            return web.Response(status=404)
        return web.Response(body=audio_bytes(clip_id), content_type="audio/mpeg")


class FakeImages:
    """OpenAI-compatible `POST /v1/images/generations` and A1111 `POST /sdapi/v1/txt2img`.

    `delay_s` holds each answer (a slow model); a `[fail]` prompt is refused with 400.
    """

    def __init__(self, *, delay_s: float = 0.0, as_url: bool = False) -> None:
        self.server = FakeServer()
        self.delay_s = delay_s
        self.as_url = as_url
        self.server.on("POST", "/v1/images/generations", self._openai)
        self.server.on("POST", "/sdapi/v1/txt2img", self._sdxl)
        self.server.on("GET", "/files/{name}", lambda rec: web.Response(body=PNG_1X1, content_type="image/png"))

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> str:
        return await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def _openai(self, rec: Recorded) -> web.Response:
        if rec.headers.get("Authorization") != f"Bearer {IMAGE_KEY}":
            return web.json_response(
                {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}, status=401
            )
        await asyncio.sleep(self.delay_s)
        prompt = str((rec.json or {}).get("prompt", ""))
        if "[fail]" in prompt:
            return web.json_response(
                {
                    "error": {
                        "message": "Your request was rejected by the safety system.",
                        "type": "invalid_request_error",
                    }
                },
                status=400,
            )
        item = (
            {"url": f"{self.url}/files/{uuid.uuid4().hex}.png"}
            if self.as_url
            else {"b64_json": base64.b64encode(PNG_1X1).decode()}
        )
        return web.json_response({"created": int(time.time()), "data": [item | {"revised_prompt": prompt}]})

    async def _sdxl(self, rec: Recorded) -> web.Response:
        await asyncio.sleep(self.delay_s)
        body = rec.json or {}
        if "[fail]" in str(body.get("prompt", "")):
            return web.json_response({"error": "OutOfMemoryError", "detail": "CUDA out of memory"}, status=500)
        return web.json_response(
            {"images": [base64.b64encode(PNG_1X1).decode()], "parameters": body, "info": '{"seed": 1234}'}
        )
