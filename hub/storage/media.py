"""Stored media: files under `<data_dir>/media/`, served at `/media/<id>`, kept for N days."""

from __future__ import annotations

import asyncio
import mimetypes
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select

from hub.errors import HubError
from hub.storage.db import Database, utcnow
from hub.storage.models import media


class MediaTooLarge(HubError):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"media larger than {limit} bytes")


@dataclass(frozen=True, slots=True)
class StoredMedia:
    id: str
    path: Path
    name: str | None
    mime: str | None
    size: int
    # What the skill asked for (image, video, audio, file); None for media stored without one.
    kind: str | None = None


class MediaStore:
    def __init__(self, db: Database, directory: Path, retention_days: int = 7) -> None:
        self._db = db
        self.directory = directory
        self.retention_days = retention_days

    def _new_path(self) -> tuple[str, Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        media_id = secrets.token_hex(16)  # 128 bits: not guessable
        return media_id, self.directory / media_id

    async def save_bytes(
        self, data: bytes, *, name: str | None = None, mime: str | None = None, kind: str | None = None
    ) -> StoredMedia:
        media_id, path = self._new_path()
        await asyncio.to_thread(path.write_bytes, data)
        return await self._record(media_id, path, name, mime, len(data), kind)

    async def save_stream(
        self,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        name: str | None = None,
        mime: str | None = None,
        kind: str | None = None,
    ) -> StoredMedia:
        """Write chunks to a temporary file, refusing more than `max_bytes`; then record it."""
        media_id, path = self._new_path()
        tmp = path.with_suffix(".part")
        size = 0
        fh = await asyncio.to_thread(open, tmp, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise MediaTooLarge(max_bytes)
                await asyncio.to_thread(fh.write, chunk)
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        fh.close()
        os.replace(tmp, path)
        return await self._record(media_id, path, name, mime, size, kind)

    async def _record(
        self, media_id: str, path: Path, name: str | None, mime: str | None, size: int, kind: str | None
    ) -> StoredMedia:
        if mime is None and name:
            mime = mimetypes.guess_type(name)[0]
        async with self._db.engine.begin() as conn:
            await conn.execute(
                media.insert().values(
                    id=media_id, path=str(path), name=name, mime=mime, size=size, kind=kind, created_at=utcnow()
                )
            )
        return StoredMedia(media_id, path, name, mime, size, kind)

    async def get(self, media_id: str) -> StoredMedia | None:
        if not media_id.isalnum() or len(media_id) > 32:
            return None
        async with self._db.engine.connect() as conn:
            r = (await conn.execute(select(media).where(media.c.id == media_id))).first()
        if r is None or not await asyncio.to_thread(Path(r.path).exists):
            return None
        return StoredMedia(r.id, Path(r.path), r.name, r.mime, r.size, r.kind)

    def id_of_path(self, path: str) -> str | None:
        """The media id of a file that lives in this store, else None."""
        p = Path(path)
        return p.name if p.parent.resolve() == self.directory.resolve() and p.name.isalnum() else None

    async def expire(self) -> int:
        """Delete media older than the retention; returns how many."""
        cutoff = utcnow() - timedelta(days=self.retention_days)
        async with self._db.engine.begin() as conn:
            rows = (await conn.execute(select(media.c.id, media.c.path).where(media.c.created_at < cutoff))).all()
            if rows:
                await conn.execute(delete(media).where(media.c.id.in_([r.id for r in rows])))
        for r in rows:
            await asyncio.to_thread(Path(r.path).unlink, missing_ok=True)
        return len(rows)
