"""Parsing of inbound bodies, for every channel: JSON and XML in, BadPayload (400) for anything
malformed or hostile, never an exception the error middleware does not know.

JSON must be UTF-8, at most MAX_DEPTH deep, with no lone surrogates (they cannot be stored);
XML must be UTF-8 whatever it declares, with no DTD (so no entities, internal or external).
"""

from __future__ import annotations

import json
import re
from pyexpat import ExpatError, ParserCreate, XMLParserType
from typing import Any, NoReturn

import orjson

from hub.errors import BadPayload

MAX_DEPTH = 64


def parse_json(raw: bytes) -> Any:
    """The JSON document in `raw`, or BadPayload."""
    try:
        # Strict: UTF-8, no NaN, no lone surrogate, integers within 64 bits. What it refuses
        # takes the standard parser's path below, which says why or takes it as before.
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        # Each level opens with one of these bytes (strings may hold more): with few enough
        # of them the document cannot be too deep, and walking it is not needed.
        if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:
            _check_depth(data)
        return data
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise BadPayload("body is not UTF-8") from None
    except RecursionError:
        raise BadPayload(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise BadPayload(f"body is not JSON ({str(exc)[:80]})") from None
    _check_tree(data)
    return data


def parse_object(raw: bytes | str) -> dict[str, Any]:
    """The JSON object in `raw` (a body, a WebSocket frame, a decrypted event), or BadPayload.

    Text is read as its UTF-8 form: a lone surrogate in it is refused like one in bytes.
    """
    data = parse_json(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if not isinstance(data, dict):
        raise BadPayload("body is not a JSON object")
    return data


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _check_tree(data: Any) -> None:
    """Depth and strings of a parsed document, without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node)
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise BadPayload(f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, value in node.items():
                _check_text(key)
                stack.append((value, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in node)


def _check_depth(data: Any) -> None:
    """Depth only: a document orjson took holds no lone surrogate."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadPayload(f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadPayload("a string holds a lone surrogate") from None


class _NoDtdExpat:
    """What xmltodict asks of the expat module: parsers that refuse any DTD."""

    ExpatError = ExpatError

    @staticmethod
    def ParserCreate(encoding: str | None = None, namespace_separator: str | None = None) -> XMLParserType:
        # The declared encoding is overridden: platforms send UTF-8, and only UTF-8 is read.
        parser = ParserCreate("utf-8", namespace_separator)
        parser.StartDoctypeDeclHandler = _refuse_dtd
        parser.EntityDeclHandler = _refuse_dtd
        parser.ExternalEntityRefHandler = _refuse_dtd
        return parser


def _refuse_dtd(*_args: Any) -> NoReturn:
    raise BadPayload("XML with a DTD or entities is refused")


def parse_xml(raw: bytes, root: str = "xml") -> dict[str, Any]:
    """The children of the `<root>` element in `raw` (xmltodict's form), or BadPayload."""
    import xmltodict  # here: only the XML platforms (WeChat, WeCom) need it, not every start

    try:
        doc = xmltodict.parse(raw, encoding="utf-8", expat=_NoDtdExpat, disable_entities=True)
    except BadPayload:
        raise
    except (ExpatError, ValueError, RecursionError) as exc:
        raise BadPayload(f"body is not XML ({type(exc).__name__})") from None
    children = doc.get(root) if isinstance(doc, dict) else None
    if not isinstance(children, dict):
        raise BadPayload(f"body has no <{root}> root")
    return children


def text_field(
    fields: dict[str, Any], name: str, *, pattern: re.Pattern[str] | None = None, required: bool = False
) -> str:
    """An element that must hold text only (no children, attributes or repeats); "" when absent.

    With `pattern`, a present value must match it whole.
    """
    value = fields.get(name)
    if value is None:
        if required:
            raise BadPayload(f"<{name}> is missing")
        return ""
    if not isinstance(value, str):
        raise BadPayload(f"<{name}> must hold text")
    if pattern is not None and not pattern.fullmatch(value):
        raise BadPayload(f"<{name}> is not in the documented form")
    return value
