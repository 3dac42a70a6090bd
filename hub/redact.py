"""Masking secrets out of URLs and error text before the hub logs, stores or prints them.

A URL keeps its scheme, host, port and path, which is what a reader needs to see where a call
went; a password becomes `***`, a query string `?***` (signatures, access tokens), a fragment is
dropped, and a Telegram `bot<token>` path segment becomes `bot***`. The same masking applies
to every URL found inside free text, such as aiohttp's `ClientResponseError`, whose message
carries the whole request URL.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"
# A URL inside text ends at whitespace, a quote or a closing bracket (reprs, messages).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`)\]]+")
# Telegram puts the bot token in the path: /bot<id>:<secret>/method, /file/bot<id>:<secret>/...
_BOT_TOKEN = re.compile(r"\bbot\d+:[^/\s'\"?#]+")


def safe_url(url: str) -> str:
    """A URL with its password, query string, fragment and bot token masked."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        parts = None
    if parts is None or not parts.scheme:
        # Not a URL we can take apart: keep what precedes the query, tokens masked.
        return _BOT_TOKEN.sub("bot" + MASK, url.split("?", 1)[0].split("#", 1)[0])
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{user}@{hostport}"
    path = _BOT_TOKEN.sub("bot" + MASK, parts.path)
    query = f"?{MASK}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{path}{query}"


def safe_text(text: str) -> str:
    """Free text (an error reason, a log line) with every URL in it made safe, and bot tokens masked."""
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: safe_url(m.group(0)), text)
    if "bot" in text:
        text = _BOT_TOKEN.sub("bot" + MASK, text)
    return text
