"""Telegram media both ways: uploads, sizes, links, URLs; inbound media downloaded on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from fake_telegram import (
    BOT_USERNAME,
    DOCUMENT,
    TOKEN,
    TOO_LARGE,
    USER,
    VOICE,
    FakeTelegram,
    error,
    mention_entity,
    message_update,
    post_update,
    telegram_toml,
)
from harness import RunningHub, eventually, make_settings, running_hub

from hub.channels.telegram import TelegramChannel
from hub.events import Audio, File, Image, Message, Video
from hub.routing.context import Context

GROUP = -1001234567890
PUBLIC = "https://hub.example.org"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
MB = 1024 * 1024


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hub(tmp_path: Path, tg: FakeTelegram) -> AsyncIterator[RunningHub]:
    settings = make_settings(tmp_path, telegram_toml(tg.url, public_url=PUBLIC))
    async with running_hub(settings) as h:
        yield h


def answer_with(h: RunningHub, message: Message) -> None:
    async def skill(ctx: Context) -> None:
        await ctx.reply(message)

    h.hub.router.register("media", skill, description="answer with media")


async def all_sent(h: RunningHub) -> None:
    async def check() -> bool:
        rows = await h.hub.outbox_repo.all_rows()
        return bool(rows) and all(r["status"] == "sent" for r in rows)

    await eventually(check, timeout=20)


async def test_a_photo_reply_goes_out_as_sendphoto_with_the_right_bytes(hub: RunningHub, tg: FakeTelegram) -> None:
    answer_with(hub, Message.of(Image(data=PNG, name="cat.png", mime="image/png"), "a cat"))
    await post_update(hub.url, message_update(f"/media@{BOT_USERNAME}", chat_id=GROUP, message_id=31))
    await all_sent(hub)
    (photo,) = tg.calls("sendPhoto")
    upload = photo.file("photo")
    assert upload is not None and upload.data == PNG and upload.filename == "cat.png"
    assert photo.params["caption"] == "a cat" and photo.params["chat_id"] == str(GROUP)
    assert photo.params["reply_parameters"] == {"message_id": 31, "allow_sending_without_reply": True}
    assert tg.calls("sendMessage") == []


async def test_a_photo_over_10_mb_goes_as_a_document(hub: RunningHub, tg: FakeTelegram, tmp_path: Path) -> None:
    big = tmp_path / "huge.png"
    big.write_bytes(PNG + b"\0" * (11 * MB))
    answer_with(hub, Message.of(Image(path=str(big), mime="image/png")))
    await post_update(hub.url, message_update("/media"))
    await all_sent(hub)
    assert tg.calls("sendPhoto") == []
    (doc,) = tg.calls("sendDocument")
    upload = doc.file("document")
    assert upload is not None and upload.filename == "huge.png" and len(upload.data) == big.stat().st_size


async def test_a_60_mb_video_goes_out_as_a_link(hub: RunningHub, tg: FakeTelegram, tmp_path: Path) -> None:
    video = tmp_path / "long.mp4"
    with video.open("wb") as fh:
        fh.truncate(60 * MB)  # sparse: no 60 MB written to disk
    answer_with(hub, Message.of(Video(path=str(video), mime="video/mp4"), "your video"))
    await post_update(hub.url, message_update("/media"))
    await all_sent(hub)
    assert tg.calls("sendVideo") == [] and tg.calls("sendDocument") == []
    (note,) = tg.delivered()
    caption, why, where, link = note.params["text"].splitlines()
    assert caption == "your video"
    assert (why, where) == ("This video (60 MB) is too large to send here.", "Open it here:")
    assert link.startswith(f"{PUBLIC}/media/")
    async with aiohttp.ClientSession() as http, http.get(hub.url + link[len(PUBLIC) :]) as resp:
        assert resp.status == 200 and resp.content_length == 60 * MB


async def test_the_note_is_in_the_chats_language(hub: RunningHub, tg: FakeTelegram, tmp_path: Path) -> None:
    video = tmp_path / "long.mp4"
    with video.open("wb") as fh:
        fh.truncate(60 * MB)
    answer_with(hub, Message.of(Video(path=str(video), mime="video/mp4")))
    # A sender whose app speaks Chinese reads it in Chinese...
    await post_update(hub.url, message_update("/media", from_user={**USER, "language_code": "zh-hans"}))
    await all_sent(hub)
    (note,) = tg.delivered()
    why, where, link = note.params["text"].splitlines()
    assert (why, where) == ("这个视频（60 MB）太大，无法在这里发送。", "在这里打开：")
    assert link.startswith(f"{PUBLIC}/media/")
    # ...unless the chat chose English with /lang.
    await hub.hub.chats.update("telegram:private:1111111", language="en")
    await post_update(hub.url, message_update("/media", from_user={**USER, "language_code": "zh-hans"}))
    await eventually(lambda: len(tg.delivered()) == 2)
    assert tg.delivered()[1].params["text"].startswith("This video (60 MB) is too large to send here.\n")


async def test_kinds_go_to_their_methods_media_first_then_text(hub: RunningHub, tg: FakeTelegram) -> None:
    answer_with(
        hub,
        Message.of(
            "here they are",
            Audio(data=b"OggS-voice", voice=True),
            Audio(data=b"ID3-song", name="song.mp3"),
            File(data=b"%PDF-1.4", name="report.pdf", caption="the report"),
            Video(file_id="BAACAgIAAxkBAAIBZ2ZfVideo"),
        ),
    )
    await post_update(hub.url, message_update("/media"))
    await all_sent(hub)
    order = [c.method for c in tg.calls() if c.method.startswith("send")]
    assert order == ["sendVoice", "sendAudio", "sendDocument", "sendVideo", "sendMessage"]
    voice = tg.calls("sendVoice")[0].file("voice")
    assert voice is not None and voice.data == b"OggS-voice"
    doc = tg.calls("sendDocument")[0]
    assert doc.params["caption"] == "the report" and doc.file("document").data == b"%PDF-1.4"  # type: ignore[union-attr]
    assert tg.calls("sendVideo")[0].params["video"] == "BAACAgIAAxkBAAIBZ2ZfVideo"  # re-sent by file_id
    assert tg.calls("sendMessage")[0].params["text"] == "here they are"


async def test_a_url_is_passed_on_and_uploaded_by_the_hub_when_telegram_cannot_fetch_it(
    hub: RunningHub, tg: FakeTelegram
) -> None:
    tg.add_file("remote", PNG, "photos/remote.png")
    url = f"{tg.url}/file/bot{TOKEN}/photos/remote.png"
    answer_with(hub, Message.of(Image(url=url)))
    tg.script("sendPhoto", error(400, "Bad Request: wrong file identifier/HTTP URL specified"))
    await post_update(hub.url, message_update("/media"))
    await all_sent(hub)
    first, second = tg.calls("sendPhoto")
    assert first.params["photo"] == url and not first.files
    upload = second.file("photo")
    assert upload is not None and upload.data == PNG


async def test_a_server_refusing_the_size_gets_a_link(hub: RunningHub, tg: FakeTelegram) -> None:
    tg.script("sendDocument", TOO_LARGE)
    answer_with(hub, Message.of(File(data=b"x" * 1000, name="data.bin")))
    await post_update(hub.url, message_update("/media"))
    await all_sent(hub)
    (note,) = tg.delivered()
    assert note.params["text"].startswith(
        "This file is too large to send here.\nOpen it here:\nhttps://hub.example.org/media/"
    )


async def test_inbound_media_become_segments_and_download_on_demand(hub: RunningHub, tg: FakeTelegram) -> None:
    caption = f"@{BOT_USERNAME} what is this?"
    photo = message_update(
        None,
        chat_id=GROUP,
        photo=[
            {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 60, "file_size": 1200},
            {"file_id": "large", "file_unique_id": "l", "width": 1280, "height": 853, "file_size": len(PNG)},
        ],
        caption=caption,
        caption_entities=[mention_entity(caption, f"@{BOT_USERNAME}")],
    )
    voice = message_update(None, voice=VOICE)
    doc = message_update(None, document=DOCUMENT)
    for update in (photo, voice, doc):
        assert await post_update(hub.url, update) == 200

    async def payload(update: dict[str, object]) -> dict[str, object]:
        row = None

        async def stored() -> bool:
            nonlocal row
            row = await hub.hub.inbox.get("telegram", str(update["update_id"]))
            return row is not None

        await eventually(stored)
        assert row is not None
        return row["payload"]  # type: ignore[no-any-return]

    p = await payload(photo)
    assert p["mentions_bot"] is True
    segments = p["message"]
    assert {"type": "text", "text": "what is this?"} in segments  # type: ignore[operator]
    assert {"type": "image", "file_id": "large", "size": len(PNG), "mime": "image/jpeg"} in segments  # type: ignore[operator]
    v = await payload(voice)
    assert v["message"] == [
        {"type": "audio", "file_id": VOICE["file_id"], "mime": "audio/ogg", "size": 23000, "duration": 5, "voice": True}
    ]
    d = await payload(doc)
    assert d["message"] == [
        {
            "type": "file",
            "file_id": DOCUMENT["file_id"],
            "name": "Testfile.pdf",
            "mime": "application/pdf",
            "size": 536392,
        }
    ]

    tg.add_file("large", PNG, "photos/file_7.jpg")
    channel = hub.hub.channels["telegram"]
    assert isinstance(channel, TelegramChannel)
    stored = await channel.fetch_media("large", name="photo.jpg")
    assert stored.path.read_bytes() == PNG and stored.size == len(PNG)
    assert [c.params["file_id"] for c in tg.calls("getFile")] == ["large"]
