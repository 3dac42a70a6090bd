"""OneBot v11 message forms: the segment array and the CQ-code string, both to one list.

A raw segment is `(type, data)` with `data` a dict of strings (the array form may carry
numbers; they are kept as given and read with `text_of`). Escapes: `&amp;` `&#91;` `&#93;`
in text, and `&#44;` too inside CQ parameters. Anything malformed degrades to text or is
skipped, never an exception: a hostile sender controls every byte here.
"""

from __future__ import annotations

import re
from typing import Any

RawSegment = tuple[str, dict[str, Any]]

# More segments than any real message has; the rest are dropped rather than parsed.
MAX_SEGMENTS = 200
_TYPE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
_UNESCAPE = re.compile(r"&(amp|#91|#93|#44);")
_UNESCAPED = {"amp": "&", "#91": "[", "#93": "]", "#44": ","}


def unescape(text: str) -> str:
    """Undo CQ escapes in one pass (so `&amp;#91;` is `&#91;`, not `[`)."""
    return _UNESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], text)


def escape(text: str, *, param: bool = False) -> str:
    """Escape text for a CQ string; `param` also escapes commas (inside `[CQ:...]`)."""
    out = text.replace("&", "&amp;").replace("[", "&#91;").replace("]", "&#93;")
    return out.replace(",", "&#44;") if param else out


def parse_cq(text: str) -> list[RawSegment]:
    """A CQ-code string as raw segments; a `[CQ:` that does not close is plain text."""
    out: list[RawSegment] = []
    pos = 0
    while pos < len(text) and len(out) < MAX_SEGMENTS:
        start = text.find("[CQ:", pos)
        if start == -1:
            _text(out, text[pos:])
            break
        end = text.find("]", start)
        if end == -1:
            _text(out, text[pos:])
            break
        seg = _cq_segment(text[start + 4 : end])
        if seg is None:  # not a CQ code after all: keep it as the text it is
            _text(out, text[pos : end + 1])
        else:
            _text(out, text[pos:start])
            out.append(seg)
        pos = end + 1
    return _merge_text(out)


def _cq_segment(body: str) -> RawSegment | None:
    kind, _, rest = body.partition(",")
    if not _TYPE.fullmatch(kind):
        return None
    data: dict[str, Any] = {}
    if rest:
        for pair in rest.split(","):
            key, eq, value = pair.partition("=")
            if not eq or not key:
                return None
            data[key.strip()] = unescape(value)
    return kind, data


def _text(out: list[RawSegment], text: str) -> None:
    if text:
        out.append(("text", {"text": unescape(text)}))


def _merge_text(segs: list[RawSegment]) -> list[RawSegment]:
    merged: list[RawSegment] = []
    for kind, data in segs:
        if kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", {"text": str(merged[-1][1]["text"]) + str(data["text"])})
        else:
            merged.append((kind, data))
    return merged


def parse_array(items: list[Any]) -> list[RawSegment]:
    """The array form: `{"type": str, "data": {...}}` items; malformed items are skipped."""
    out: list[RawSegment] = []
    for item in items[:MAX_SEGMENTS]:
        if not isinstance(item, dict):
            continue
        kind, data = item.get("type"), item.get("data")
        if not isinstance(kind, str) or not _TYPE.fullmatch(kind):
            continue
        if data is None:
            data = {}
        if not isinstance(data, dict):
            continue
        out.append((kind, data))
    return out


def parse_message(message: Any) -> list[RawSegment]:
    """Either form (a lone segment object too, as some implementations send)."""
    if isinstance(message, str):
        return parse_cq(message)
    if isinstance(message, list):
        return parse_array(message)
    if isinstance(message, dict):
        return parse_array([message])
    return []


def text_of(data: dict[str, Any], key: str, limit: int = 4096) -> str:
    """A scalar field as a string (numbers as their digits); anything else is empty."""
    value = data.get(key)
    if isinstance(value, bool):
        return ""
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, int | float):
        return str(value)
    return ""


def to_cq(segments: list[dict[str, Any]]) -> str:
    """The CQ-string form of an array message (for logs and for implementations that want it)."""
    out: list[str] = []
    for seg in segments:
        kind, data = seg["type"], seg.get("data") or {}
        if kind == "text":
            out.append(escape(str(data.get("text", ""))))
        else:
            params = "".join(f",{k}={escape(str(v), param=True)}" for k, v in data.items())
            out.append(f"[CQ:{kind}{params}]")
    return "".join(out)
