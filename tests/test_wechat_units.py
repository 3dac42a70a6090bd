"""The pieces of the WeChat channels: official crypto samples, parsing, rendering, token cache,
errcodes, and how held passive replies are combined."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from hub.channels.parts import render
from hub.channels.platform import TokenCache
from hub.channels.wechat.api import send_error
from hub.channels.wechat.inbound import CallbackCrypto, open_envelope, parse_inbound, signature
from hub.channels.wechat.passive import EARLIER, HELD_TEXT_MAX, MORE, PASSIVE_TEXT_MAX, plan_answer
from hub.errors import BadPayload, VerificationFailed
from hub.events import Audio, Image, Message, Text, Unsupported, Video
from hub.i18n import LANGS, texts
from hub.storage.held import HeldReply

# WeChat's own safe-mode sample (REFERENCE.md), used literally.
OA_TOKEN = "spamtest"
OA_AES = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OA_APP_ID = "wx2c2769f8efd9abc2"
OA_TIMESTAMP = "1409735669"
OA_NONCE = "1320562132"
OA_MSG_SIGNATURE = "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
OA_ENCRYPT = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9Fr"
    "XpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+W"
    "GzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EI"
    "BYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE="
)

# WeCom's official sample.
WECOM_TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
WECOM_AES = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
WECOM_CORP = "ww1436e0e65a779aee"
WECOM_ECHO = "fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA=="
WECOM_ENCRYPT = (
    "Kl7kjoSf6DMD1zh7rtrHjFaDapSCkaOnwu3bqLc5tAybhhMl9pFeK8NslNPVdMwmBQTNoW4mY7AIjeLvEl3NyeTkAgGzBhzTtRLNshw2AEew+k"
    "kYcD+Fq72Kt00fT0WnN87hGrW8SqGc+NcT3mu87Ha3dz1pSDi6GaUA6A0sqfde0VJPQbZ9U+3JWcoD4Z5jaU0y9GSh010wsHF8KZD24YhmZH4"
    "ch4Ka7ilEbjbfvhKkNL65HHL0J6EYJIZUC2pFrdkJ7MhmEbU2qARR4iQHE7wy24qy0cRX3Mfp6iELcDNfSsPGjUQVDGxQDCWjayJOpcwocugux"
    "082f49HKYg84EpHSGXAyh+/oxwaWbvL6aSDPOYuPDGOCI8jmnKiypE+"
)


def test_url_signature_vector() -> None:
    assert signature("test", "1410685589", "test") == "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"
    crypto = CallbackCrypto("test", None, OA_APP_ID, enterprise=False)
    crypto.check("f21891de399b4e33a1a93c9a7b8a8fffb5a443ff", "1410685589", "test")
    with pytest.raises(VerificationFailed) as bad:
        crypto.check("f21891de399b4e33a1a93c9a7b8a8fffb5a443fe", "1410685589", "test")
    assert bad.value.status == 403


def test_official_account_safe_mode_sample() -> None:
    crypto = CallbackCrypto(OA_TOKEN, OA_AES, OA_APP_ID, enterprise=False)
    body = f"<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><Encrypt><![CDATA[{OA_ENCRYPT}]]></Encrypt></xml>"
    query = {"timestamp": OA_TIMESTAMP, "nonce": OA_NONCE, "msg_signature": OA_MSG_SIGNATURE, "encrypt_type": "aes"}
    msg = parse_inbound(open_envelope(crypto, body.encode(), query), enterprise=False)
    assert msg.kind == "text"
    assert msg.sender == "oyORnuP8q7ou2gfYjqLzSIWZf0rs"
    assert msg.event_id == "6054768590064713728"
    assert msg.message == Message((Text("abcdteT"),))


def test_safe_mode_refuses_tampering_and_other_apps() -> None:
    body = f"<xml><Encrypt><![CDATA[{OA_ENCRYPT}]]></Encrypt></xml>".encode()
    query = {"timestamp": OA_TIMESTAMP, "nonce": OA_NONCE, "msg_signature": OA_MSG_SIGNATURE}
    crypto = CallbackCrypto(OA_TOKEN, OA_AES, OA_APP_ID, enterprise=False)
    with pytest.raises(VerificationFailed):  # another nonce: the signature no longer covers it
        open_envelope(crypto, body, {**query, "nonce": "1320562133"})
    with pytest.raises(VerificationFailed):  # no msg_signature at all
        open_envelope(crypto, body, {"timestamp": OA_TIMESTAMP, "nonce": OA_NONCE})
    with pytest.raises(VerificationFailed):  # a plain-mode request to an account in safe mode
        open_envelope(crypto, b"<xml/>", {"timestamp": "1", "nonce": "2", "signature": signature(OA_TOKEN, "1", "2")})
    other_app = CallbackCrypto(OA_TOKEN, OA_AES, "wx0000000000000000", enterprise=False)
    with pytest.raises(VerificationFailed) as wrong_app:
        open_envelope(other_app, body, query)
    assert wrong_app.value.status == 403


def test_wecom_official_samples() -> None:
    crypto = CallbackCrypto(WECOM_TOKEN, WECOM_AES, WECOM_CORP, enterprise=True)
    crypto.check("012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb", "1476416373", "47744683", WECOM_ECHO)
    assert crypto.decrypt(WECOM_ECHO) == "1288432023552776189"
    body = f"<xml><ToUserName><![CDATA[{WECOM_CORP}]]></ToUserName><Encrypt><![CDATA[{WECOM_ENCRYPT}]]></Encrypt></xml>"
    query = {
        "msg_signature": "0c3914025cb4b4d68103f6bfc8db550f79dcf48e",
        "timestamp": "1476422779",
        "nonce": "1597212914",
    }
    msg = parse_inbound(open_envelope(crypto, body.encode(), query), enterprise=True)
    assert (msg.kind, msg.sender, msg.agent_id) == ("text", "ChenJiaShun", "1000002")
    assert msg.message.text == "你好"


def test_malformed_bodies_are_bad_payloads() -> None:
    plain = CallbackCrypto("t", None, OA_APP_ID, enterprise=False)
    q = {"timestamp": "1", "nonce": "2", "signature": signature("t", "1", "2")}
    with pytest.raises(BadPayload):
        parse_inbound(open_envelope(plain, b"<xml><MsgType>text", q), enterprise=False)
    safe = CallbackCrypto(OA_TOKEN, OA_AES, OA_APP_ID, enterprise=False)
    garbage = "bm90IHJlYWxseSBlbmNyeXB0ZWQ="
    query = {"timestamp": "1", "nonce": "2", "msg_signature": signature(OA_TOKEN, "1", "2", garbage)}
    with pytest.raises(BadPayload):
        open_envelope(safe, f"<xml><Encrypt>{garbage}</Encrypt></xml>".encode(), query)


@pytest.mark.parametrize(
    ("xml", "expected", "event_id"),
    [
        (
            "<MsgType>image</MsgType><PicUrl>http://p/1.jpg</PicUrl><MediaId>M1</MediaId><MsgId>11</MsgId>",
            (Image(url="http://p/1.jpg", file_id="M1", mime="image/jpeg"),),
            "11",
        ),
        (
            "<MsgType>voice</MsgType><MediaId>V1</MediaId><Format>amr</Format><Recognition>明天天气</Recognition>"
            "<MsgId>12</MsgId>",
            (Text("明天天气"), Audio(file_id="V1", mime="audio/amr", voice=True)),
            "12",
        ),
        (
            "<MsgType>voice</MsgType><MediaId>V2</MediaId><Format>amr</Format><MsgId>13</MsgId>",
            (Audio(file_id="V2", mime="audio/amr", voice=True),),
            "13",
        ),
        (
            "<MsgType>video</MsgType><MediaId>D1</MediaId><ThumbMediaId>T1</ThumbMediaId><MsgId>14</MsgId>",
            (Video(file_id="D1", mime="video/mp4"),),
            "14",
        ),
        (
            "<MsgType>location</MsgType><Location_X>23.13</Location_X><Location_Y>113.26</Location_Y>"
            "<Scale>20</Scale><Label>Guangzhou</Label><MsgId>15</MsgId>",
            (Unsupported("location", "Guangzhou (23.13, 113.26)"),),
            "15",
        ),
        (
            "<MsgType>link</MsgType><Title>Hub</Title><Description>d</Description><Url>http://x</Url><MsgId>16</MsgId>",
            (Unsupported("link", "Hub http://x"),),
            "16",
        ),
        (
            "<MsgType>event</MsgType><Event>subscribe</Event>",
            (Unsupported("event:subscribe", ""),),
            "oU1:1700000000",
        ),
    ],
)
def test_message_kinds(xml: str, expected: tuple[object, ...], event_id: str) -> None:
    head = "<xml><ToUserName>gh</ToUserName><FromUserName>oU1</FromUserName><CreateTime>1700000000</CreateTime>"
    full = f"{head}{xml}</xml>"
    msg = parse_inbound(full, enterprise=False)
    assert msg.message.segments == expected
    assert msg.event_id == event_id


def test_render_splits_text_at_2048_bytes_and_keeps_media_order() -> None:
    long = "你好世界。" * 300  # 4,500 bytes of three-byte characters
    parts = render(
        Message.of(long, Image(path="/x.png", caption="a cat"), Video(path="/v.mp4", caption="piglet\nsinging")), 2048
    )
    kinds = [p.kind for p in parts]
    assert kinds == ["text", "text", "text", "image", "text", "video"]
    assert all(len(p.text.encode()) <= 2048 for p in parts if p.kind == "text")
    assert "".join(p.text for p in parts[:3]) == long
    assert parts[4].text == "a cat"
    assert (parts[5].title, parts[5].description) == ("piglet", "piglet\nsinging")


async def test_one_token_fetch_however_many_wait() -> None:
    fetched = 0

    async def fetch() -> tuple[str, float]:
        nonlocal fetched
        fetched += 1
        await asyncio.sleep(0.05)
        return f"T{fetched}", 7200

    cache = TokenCache(fetch)
    tokens = await asyncio.gather(*(cache.get() for _ in range(50)))
    assert set(tokens) == {"T1"} and fetched == 1
    # 50 sends all told "token expired": one new token, not 50.
    renewed = await asyncio.gather(*(cache.renew("T1") for _ in range(50)))
    assert set(renewed) == {"T2"} and fetched == 2


async def test_token_is_refreshed_ahead_of_expiry() -> None:
    now = [0.0]
    fetched: list[str] = []

    async def fetch() -> tuple[str, float]:
        fetched.append(f"T{len(fetched) + 1}")
        return fetched[-1], 7200

    cache = TokenCache(fetch, clock=lambda: now[0])
    assert await cache.get() == "T1"
    now[0] = 7200 - 301  # more than 5 minutes left: still good
    assert await cache.get() == "T1"
    now[0] = 7200 - 299  # less than 5 minutes left: refreshed before it expires
    assert await cache.get() == "T2"


def test_errcodes_map_to_what_the_outbox_does() -> None:
    busy = send_error("/x", -1, "system busy")
    assert busy.retryable and busy.retry_after
    rate = send_error("/x", 45009, "reach max api daily quota limit")
    assert rate.retryable and rate.retry_after and rate.retry_after >= 10
    late = send_error("/x", 45015, "response out of time limit")
    assert not late.retryable and "48-hour" in str(late)
    assert not send_error("/x", 40003, "invalid openid").retryable


def _held(i: int, quote: str | None, payload: dict[str, object]) -> HeldReply:
    return HeldReply(i, "wechat:private:o", quote, payload, datetime.now(UTC))


def test_plan_gives_the_reply_alone_when_it_is_the_only_one() -> None:
    plan = plan_answer([_held(1, "m1", {"msgtype": "text", "text": "hi"})], "m1", texts("zh"))
    assert plan.payload == {"msgtype": "text", "text": "hi"} and plan.ids == [1]


def test_plan_marks_earlier_replies_and_says_more_follows() -> None:
    held = [
        _held(1, "m1", {"msgtype": "text", "text": "answer one"}),
        _held(2, "m2", {"msgtype": "text", "text": "answer two"}),
        _held(3, "m2", {"msgtype": "image", "media_id": "M"}),
    ]
    plan = plan_answer(held, "m2", texts("zh"))
    text = plan.payload["text"]
    assert plan.ids == [1, 2]
    assert text.startswith("[回复你之前的消息]\nanswer one") and "[回复这条消息]\nanswer two" in text
    assert text.endswith("[还有后续：发送任意消息即可收到。]")
    # In a chat set to English, the notes are English.
    en = plan_answer(held, "m2", texts("en"))
    assert en.payload["text"].startswith(f"{EARLIER}\nanswer one") and en.payload["text"].endswith(MORE)
    media = plan_answer(held[2:], "m3", texts("zh"))
    assert media.payload == {"msgtype": "image", "media_id": "M"} and media.ids == [3]


@pytest.mark.parametrize("lang", LANGS)
def test_plan_never_exceeds_one_passive_text(lang: str) -> None:
    t = texts(lang)  # type: ignore[arg-type]
    big = "字" * (HELD_TEXT_MAX // 3)
    held = [_held(i, f"m{i}", {"msgtype": "text", "text": big}) for i in range(1, 4)]
    plan = plan_answer(held, "m9", t)
    assert plan.ids == [1]
    assert len(plan.payload["text"].encode()) <= PASSIVE_TEXT_MAX and plan.payload["text"].endswith(t(MORE))


def test_plan_sends_a_link_for_media_older_than_wechat_keeps_it() -> None:
    payload = {
        "msgtype": "image",
        "media_id": "M",
        "expired": "这张图片等待太久，已无法在这里显示。\n在这里打开：\nhttps://h/media/1",
    }
    fresh = plan_answer([_held(1, "m1", payload)], "m2", texts("zh"))
    assert fresh.payload == {"msgtype": "image", "media_id": "M"}
    old = HeldReply(1, "wechat:private:o", "m1", payload, datetime.now(UTC) - timedelta(days=3))
    assert plan_answer([old], "m2", texts("zh")).payload == {"msgtype": "text", "text": payload["expired"]}
