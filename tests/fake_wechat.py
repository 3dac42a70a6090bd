"""WeChat and WeCom from the hub's point of view, on 127.0.0.1.

`FakeWeChatApi` is the platforms' HTTP API (`api_base` points at it): Official Account
`/cgi-bin/token`, `/cgi-bin/stable_token`, `/cgi-bin/message/custom/send`; WeCom
`/cgi-bin/gettoken`, `/cgi-bin/message/send`; both `/cgi-bin/media/upload`. It issues tokens,
answers a refused token with 40001 (or what `token_error` says) like the real API, records
every call and uploaded file, and can be told to answer an errcode next (`fail_next`).

`WeChatServer` is the other direction: it builds, signs and (in safe mode) encrypts the
callbacks WeChat's servers post to the hub, and opens the encrypted passive replies.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import xmltodict
from harness import FakeServer, Recorded
from wechatpy.crypto import WeChatCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as EnterpriseCrypto
from wechatpy.utils import WeChatSigner

APP_ID = "wx2c2769f8efd9abc2"
APP_SECRET = "oa-secret"
CORP_ID = "ww1436e0e65a779aee"
CORP_SECRET = "corp-secret"
AGENT_ID = "1000002"
OPENID = "oyORnuP8q7ou2gfYjqLzSIWZf0rs"
ACCOUNT = "gh_10f6c3c3ac5a"


@dataclass
class Upload:
    type: str
    filename: str
    data: bytes
    content_type: str


class FakeWeChatApi:
    def __init__(self) -> None:
        self.server = FakeServer()
        self.valid_tokens: set[str] = set()
        self.token_error = 40001
        self.expires_in = 7200
        self.token_delay_s = 0.0
        self._issued = 0
        self._media = 0
        self._msgs = 0
        s = self.server
        s.on("GET", "/cgi-bin/token", self._token)
        s.on("POST", "/cgi-bin/stable_token", self._token)
        s.on("GET", "/cgi-bin/gettoken", self._token)
        s.on("POST", "/cgi-bin/media/upload", self._upload)
        s.on("POST", "/cgi-bin/message/custom/send", self._send)
        s.on("POST", "/cgi-bin/message/send", self._send)

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> str:
        return await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    # --- scripting ------------------------------------------------------------------------

    def expire_tokens(self, errcode: int = 40001) -> None:
        """Every token issued so far is refused from now on, with `errcode`."""
        self.valid_tokens.clear()
        self.token_error = errcode

    def fail_next(self, path: str, errcode: int, errmsg: str = "fake error", n: int = 1) -> None:
        self.server.queue("POST", path, *({"errcode": errcode, "errmsg": errmsg} for _ in range(n)))

    # --- what the hub did -----------------------------------------------------------------

    def token_calls(self) -> list[Recorded]:
        return [
            r
            for r in self.server.requests
            if r.path in ("/cgi-bin/token", "/cgi-bin/stable_token", "/cgi-bin/gettoken")
        ]

    def sent(self, path: str = "/cgi-bin/message/custom/send") -> list[dict[str, Any]]:
        """Bodies of the send calls that were accepted (errcode 0)."""
        return [r.json for r in self.server.calls(path) if getattr(r, "accepted", False)]

    def uploads(self) -> list[Upload]:
        out = []
        for r in self.server.calls("/cgi-bin/media/upload"):
            if getattr(r, "accepted", False):
                media = r.form["media"]
                out.append(Upload(r.query.get("type", ""), media["filename"], media["data"], media["content_type"]))
        return out

    async def wait_sent(self, n: int, path: str = "/cgi-bin/message/custom/send", timeout: float = 10.0) -> None:
        await self.server.wait_for(lambda: len(self.sent(path)) >= n, timeout=timeout)

    # --- the API ------------------------------------------------------------------------------

    async def _token(self, r: Recorded) -> dict[str, Any]:
        params = dict(r.query)
        if r.json:
            params.update({k: str(v) for k, v in r.json.items()})
        app_ok = params.get("appid") == APP_ID and params.get("secret") == APP_SECRET
        corp_ok = params.get("corpid") == CORP_ID and params.get("corpsecret") == CORP_SECRET
        if not (app_ok or corp_ok):
            return {"errcode": 40125, "errmsg": "invalid appsecret"}
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s)
        self._issued += 1
        token = f"TOKEN-{self._issued}-{secrets.token_hex(4)}"
        self.valid_tokens.add(token)
        return {"access_token": token, "expires_in": self.expires_in}

    def _refused(self, r: Recorded) -> dict[str, Any] | None:
        if r.query.get("access_token") not in self.valid_tokens:
            return {"errcode": self.token_error, "errmsg": "invalid credential, access_token is invalid or not latest"}
        r.accepted = True  # type: ignore[attr-defined]
        return None

    def _upload(self, r: Recorded) -> dict[str, Any]:
        refused = self._refused(r)
        if refused:
            return refused
        if "media" not in r.form:
            r.accepted = False  # type: ignore[attr-defined]
            return {"errcode": 41005, "errmsg": "media data missing"}
        self._media += 1
        return {"type": r.query.get("type"), "media_id": f"MEDIA-{self._media}", "created_at": int(time.time())}

    def _send(self, r: Recorded) -> dict[str, Any]:
        refused = self._refused(r)
        if refused:
            return refused
        self._msgs += 1
        return {"errcode": 0, "errmsg": "ok", "msgid": f"MSG-{self._msgs}"}


# --- the callbacks WeChat posts ----------------------------------------------------------------


def sign(*parts: str) -> str:
    signer = WeChatSigner()
    signer.add_data(*parts)
    return str(signer.signature)


def text_xml(content: str, msg_id: str, *, sender: str = OPENID, to: str = ACCOUNT, agent: str | None = None) -> str:
    agent_xml = f"<AgentID>{agent}</AgentID>" if agent else ""
    return (
        f"<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{sender}]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId>{agent_xml}</xml>"
    )


def event_xml(event: str, *, create_time: int, sender: str = OPENID, to: str = ACCOUNT, key: str = "") -> str:
    return (
        f"<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{sender}]]></FromUserName>"
        f"<CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[{event}]]></Event><EventKey><![CDATA[{key}]]></EventKey></xml>"
    )


@dataclass
class Answer:
    status: int
    text: str
    seconds: float


class WeChatServer:
    """Signs (plain mode) or encrypts and signs (safe mode) callbacks, as WeChat does."""

    def __init__(
        self,
        token: str,
        aes_key: str | None = None,
        receiver_id: str = APP_ID,
        *,
        enterprise: bool = False,
        path: str = "/webhooks/wechat",
    ) -> None:
        self.token = token
        self.aes_key = aes_key
        self.enterprise = enterprise
        self.path = path
        self.crypto: Any = None
        if aes_key:
            self.crypto = (EnterpriseCrypto if enterprise else WeChatCrypto)(token, aes_key, receiver_id)

    def request(
        self, xml: str, *, timestamp: str | None = None, nonce: str | None = None
    ) -> tuple[dict[str, str], str]:
        """Query parameters and body of the POST WeChat would make for this message."""
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or secrets.token_hex(5)
        params = {"timestamp": timestamp, "nonce": nonce}
        if self.crypto is None:
            params["signature"] = sign(self.token, timestamp, nonce)
            return params, xml
        wrapped = xmltodict.parse(self.crypto.encrypt_message(xml, nonce, timestamp))["xml"]
        encrypted = wrapped["Encrypt"]
        params["msg_signature"] = sign(self.token, timestamp, nonce, encrypted)
        if not self.enterprise:
            params.update(signature=sign(self.token, timestamp, nonce), encrypt_type="aes", openid=OPENID)
        to = CORP_ID if self.enterprise else ACCOUNT
        body = f"<xml><ToUserName><![CDATA[{to}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        return params, body

    async def post(self, base_url: str, xml: str, **kw: Any) -> Answer:
        params, body = self.request(xml, **kw)
        return await self.post_raw(base_url, params, body)

    async def post_raw(self, base_url: str, params: dict[str, str], body: str) -> Answer:
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}{self.path}", params=params, data=body.encode()) as resp:
                return Answer(resp.status, await resp.text(), time.monotonic() - started)

    def open_reply(self, text: str) -> dict[str, Any]:
        """The fields of a passive reply; in safe mode its signature is checked and it is decrypted."""
        doc = xmltodict.parse(text)["xml"]
        if self.crypto is None:
            return dict(doc)
        expected = sign(self.token, doc["TimeStamp"], doc["Nonce"], doc["Encrypt"])
        assert doc["MsgSignature"] == expected, "passive reply signature does not verify"
        plain = self.crypto.decrypt_message(text, doc["MsgSignature"], doc["TimeStamp"], doc["Nonce"])
        return dict(xmltodict.parse(plain)["xml"])
