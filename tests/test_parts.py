"""The parts every channel shares: the multi-part send loop, media links, the cluster leader."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from harness import eventually, pg_database

from hub.channels.base import SendRequest
from hub.channels.parts import MediaLinks, read_chunks, send_parts
from hub.events import ChatRef, File, Image, Message
from hub.storage.db import Database
from hub.storage.leader import leader_lock
from hub.storage.media import MediaStore
from hub.storage.migrate import migrate

CHAT = ChatRef("fake", "private", "c1")


async def test_a_retried_send_resumes_after_the_last_part_sent() -> None:
    recorded: list[int] = []
    sent: list[str] = []

    async def record(n: int) -> None:
        recorded.append(n)

    async def send_one(n: int, part: str) -> str | None:
        sent.append(part)
        return f"id-{n}" if part != "b" else None

    request = SendRequest(CHAT, Message.of("x"), progress=1, on_progress=record)
    ids = await send_parts(["a", "b", "c", "d"], request, send_one)
    assert sent == ["b", "c", "d"]
    assert ids == ["id-2", "id-3"]
    assert recorded == [2, 3, 4]


async def test_media_links(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    await migrate(db)
    try:
        store = MediaStore(db, tmp_path / "media")
        outside = tmp_path / "report.pdf"
        outside.write_bytes(b"%PDF" * 1000)
        links = MediaLinks(store, "https://hub.example/")
        # A URL segment links to itself; local files and bytes are stored and linked.
        assert await links.link(Image(url="https://cdn.example/a.png")) == "https://cdn.example/a.png"
        link = await links.link(File(path=str(outside)))
        assert link is not None and link.startswith("https://hub.example/media/")
        stored = store.directory / link.rsplit("/", 1)[1]
        assert stored.read_bytes() == outside.read_bytes()
        # Already in the store: the same id, no copy.
        assert await links.link(File(path=str(stored))) == link
        assert (await MediaLinks(store, "").link(Image(data=b"png")) or "").startswith("/media/")
        assert await MediaLinks(store, None).link(Image(data=b"png")) is None
        assert await MediaLinks(store, "https://h", publish_files=False).link(File(path=str(outside))) is None
    finally:
        await db.close()


async def test_read_chunks_streams_a_file(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 2500)
    assert [len(c) async for c in read_chunks(path, chunk=1000)] == [1000, 1000, 500]


@pytest.mark.postgres
async def test_one_leader_at_a_time_and_the_next_takes_over() -> None:
    async with pg_database() as url:
        db = Database(url)
        try:
            first_in = asyncio.Event()
            first_out = asyncio.Event()
            second_in = asyncio.Event()
            standby: list[int] = []

            async def first() -> None:
                first_in.set()
                await first_out.wait()

            async def second() -> None:
                second_in.set()

            a = asyncio.create_task(leader_lock(db, "test-leader", first, retry_s=0.05))
            await asyncio.wait_for(first_in.wait(), 20)
            b = asyncio.create_task(
                leader_lock(db, "test-leader", second, retry_s=0.05, on_standby=lambda: standby.append(1))
            )
            await eventually(lambda: len(standby) >= 2)
            assert not second_in.is_set()
            first_out.set()
            await asyncio.wait_for(a, 20)
            await asyncio.wait_for(b, 20)
            assert second_in.is_set()
        finally:
            await db.close()
