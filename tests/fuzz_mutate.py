"""Mutations for the fuzz test: bytes, JSON documents and WeChat-style XML, each from a seeded RNG.

Every mutator returns the new payload and a short name of what it did (for failure messages).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

HOLE = "__fuzz_hole__"
INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\x28",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
]


def _huge(rng: random.Random, limit: int) -> str:
    return rng.choice("Aé中😀") * rng.randint(1000, limit // 8)


def mutate_bytes(rng: random.Random, data: bytes, max_body: int) -> tuple[bytes, str]:
    buf = bytearray(data)
    op = rng.randrange(10)
    if op == 0:
        return b"", "empty body"
    if op == 1 and buf:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf), "flipped bytes"
    if op == 2:
        at = rng.randint(0, len(buf))
        return bytes(buf[:at]) + rng.choice(INVALID_UTF8) + bytes(buf[at:]), "invalid UTF-8"
    if op == 3:
        return bytes(buf[: rng.randint(0, len(buf))]), "truncated"
    if op == 4:
        at = rng.randint(0, len(buf))
        return bytes(buf[:at]) + _huge(rng, max_body).encode() + bytes(buf[at:]), "huge string"
    if op == 5:
        return rng.randbytes(rng.randint(1, 2048)), "random bytes"
    if op == 6:
        return b"\xef\xbb\xbf" + data, "BOM"
    if op == 7:
        return data.decode("utf-8", "replace").encode("utf-16"), "UTF-16"
    if op == 8:
        at = rng.randint(0, len(buf))
        return bytes(buf[:at]) + b"\x00" * rng.randint(1, 16) + bytes(buf[at:]), "NUL bytes"
    return rng.choice([b"[" * 100_000, b'{"a":' * 50_000, b"<a>" * 80_000]), "deep nesting"


# --- JSON ----------------------------------------------------------------------------------------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


WRONG_VALUES: list[Any] = [None, True, False, 0, -1, 2**63, 2**200, 1.5, -1e308, "", "0", "x", [], {}, [[]], {"a": {}}]
RAW_VALUES = [
    "[" * 100_000,  # unbalanced, 100k deep
    "[" * 5000 + "]" * 5000,
    "[" * 70 + "]" * 70,  # balanced, just over the depth limit
    '{"a":' * 3000 + "1" + "}" * 3000,
    '"\\ud800"',  # a lone surrogate
    '"\\udfff tail"',
    '"nul \\u0000 byte"',
    "NaN",
    "-Infinity",
    "1" * 5000,  # longer than Python converts
    "1e99999",
    '"' + "\\u00e9" * 20_000 + '"',
]


def mutate_json(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    doc = json.loads(raw)
    paths = _paths(doc)
    path = rng.choice(paths)
    where = "/".join(map(str, path)) or "(root)"
    op = rng.randrange(6)
    if op == 0:
        value = rng.choice(WRONG_VALUES)
        return json.dumps(_set(doc, path, value)).encode(), f"{where} = {value!r:.20}"
    if op == 1:
        value_raw = rng.choice(RAW_VALUES)
        text = json.dumps(_set(doc, path, HOLE), ensure_ascii=False).replace(f'"{HOLE}"', value_raw, 1)
        return text.encode(), f"{where} = raw {value_raw[:12]!r}"
    if op == 2 and path:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        return json.dumps(doc).encode(), f"{where} removed"
    if op == 3:
        value = "".join(
            rng.choice('ab中😀\n\t"\\') for _ in range(rng.randint(1, 200_000 if rng.random() < 0.2 else 40))
        )
        return json.dumps(_set(doc, path, value), ensure_ascii=rng.random() < 0.5).encode(), f"{where} = string"
    if op == 4:
        return json.dumps(rng.choice([[doc], "text", 42, None, [doc] * 3])).encode(), "not an object"
    text = raw.decode()
    return (text[:-1] + ', "extra": ' + text + "}").encode(), "nested copy"


# --- XML -----------------------------------------------------------------------------------------

FIELD = re.compile(r"<(\w+)>(.*?)</\1>", re.S)
DTDS = [
    '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>',
    '<!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE xml SYSTEM "http://127.0.0.1:9/x.dtd">',
    '<!DOCTYPE xml [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>',
]
ENTITY_USES = ["&d;", "&e;", "&unknown;", "&amp;&lt;&#x41;&#0;", "&#xD800;"]


def _fields(raw: bytes) -> list[list[str]]:
    body = raw.decode()
    return [[m.group(1), m.group(2)] for m in FIELD.finditer(body[len("<xml>") : -len("</xml>")])]


def _render(fields: list[list[str]], root: str = "xml") -> str:
    return f"<{root}>" + "".join(f"<{k}>{v}</{k}>" for k, v in fields) + f"</{root}>"


def mutate_xml(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    fields = _fields(raw)
    i = rng.randrange(len(fields))
    name = fields[i][0]
    op = rng.randrange(12)
    if op == 0:
        fields[i][1] = "<a><b>nested</b><c/></a>"
        return _render(fields).encode(), f"{name} holds elements"
    if op == 1:
        depth = rng.choice([100, 1000, 20_000])
        fields[i][1] = "<a>" * depth + "x" + "</a>" * depth
        return _render(fields).encode(), f"{name} nested {depth} deep"
    if op == 2:
        fields.insert(i, list(fields[i]))
        return _render(fields).encode(), f"{name} repeated"
    if op == 3:
        text = _render(fields).replace(f"<{name}>", f'<{name} type="x" {name}="1">', 1)
        return text.encode(), f"{name} with attributes"
    if op == 4:
        fields[i][1] = rng.choice(
            ["", "abc", "-1", "1.5", "9" * 40, " 12 ", "１２", "a:b#c", "x" * 300, "<![CDATA[]]>"]
        )
        return _render(fields).encode(), f"{name} = odd text"
    if op == 5:
        del fields[i]
        return _render(fields).encode(), f"{name} removed"
    if op == 6:
        fields[i][1] = "<![CDATA[" + rng.choice(["]]>", "x]]>y", "\x01\x02", "😀" * 30_000]) + "]]>"
        return _render(fields).encode(), f"{name} odd CDATA"
    if op == 7:
        fields[i][1] = rng.choice(ENTITY_USES)
        return (rng.choice(DTDS) + _render(fields)).encode(), "DTD with entities"
    if op == 8:
        decl = rng.choice(
            ['<?xml version="1.0" encoding="UTF-16"?>', '<?xml version="1.0" encoding="GBK"?>', "<?pi x?>"]
        )
        return (decl + _render(fields)).encode(), "declaration"
    if op == 9:
        return _render(fields, rng.choice(["root", "XML", "x:xml"])).encode(), "other root"
    if op == 10:
        return (_render(fields) + rng.choice(["<xml/>", "junk", "<!-- c -->", "</xml>"])).encode(), "trailing"
    fields[i][1] = "&#" + str(rng.choice([0, 1, 0xD800, 0x110000, 65])) + ";"
    return _render(fields).encode(), f"{name} char reference"
