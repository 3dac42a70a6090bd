"""The one JSON codec of the hot path: orjson, with the standard library for what it refuses.

orjson is several times faster, but refuses what `json` takes: integers beyond 64 bits, lone
surrogates, NaN in stored text. Those fall back to `json`, so every value reads and writes as
it did before.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTS = orjson.OPT_NON_STR_KEYS


def dumps_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=_OPTS)
    except TypeError:
        return json.dumps(value).encode()


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_OPTS).decode()
    except TypeError:
        return json.dumps(value)


def loads(raw: str | bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
