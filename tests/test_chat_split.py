"""split_text: long replies cut for platforms on good boundaries, never through a character or a
code block's fences."""

from __future__ import annotations

import random
import re
import unicodedata

import pytest

from hub.channels.base import _measure, split_text

FAMILY = "👨\u200d👩\u200d👧\u200d👦"  # one visible emoji, seven code points
FLAGS = "🇨🇳🇯🇵🇺🇸"
WAVE = "👋🏽"  # emoji + skin tone
ACCENT = "e\u0301"  # e + combining acute
HINDI = "नमस्ते"  # vowel signs (category Mc/Mn) follow their consonants


def test_short_text_is_one_part() -> None:
    assert split_text("hello", 10) == ["hello"]
    assert split_text("", 10) == [""]
    with pytest.raises(ValueError):
        split_text("x", 0)


def test_paragraphs_before_sentences_before_words() -> None:
    a, b = "A" * 50, "B b. " * 10
    assert split_text(f"{a}\n\n{b}", 80) == [a, b.rstrip()]
    text = "One sentence here. Another one there. " * 5
    parts = split_text(text, 60)
    assert all(p.endswith(".") for p in parts), parts
    words = split_text("word " * 40, 23)
    assert all(not p.startswith(" ") and not p.endswith(" ") and "wor" not in p.replace("word", "") for p in words)


def test_chinese_sentences_end_at_the_full_stop() -> None:
    text = "今天天气很好，我们去公园散步。" * 12
    parts = split_text(text, 40)
    assert all(p.endswith("。") for p in parts), parts
    assert "".join(parts) == text


def test_a_code_block_that_fits_moves_whole_to_the_next_part() -> None:
    block = "```python\n" + "\n".join(f"print({i})" for i in range(8)) + "\n```"
    text = "Here is the code you asked for, with a few words before it so it runs long" + "\n" + block + "\nDone."
    parts = split_text(text, 120)
    assert any(block in p for p in parts), parts
    assert all(p.count("```") % 2 == 0 for p in parts)


def test_a_long_code_block_is_closed_and_reopened_with_its_language() -> None:
    lines = [f"    value_{i} = compute({i})" for i in range(60)]
    text = "Intro.\n\n```python\n" + "\n".join(lines) + "\n```\n\nThat is all."
    parts = split_text(text, 400)
    assert len(parts) > 3
    for p in parts:
        assert len(p) <= 400 and p.count("```") % 2 == 0, p
    for p in parts[1:-1]:
        assert p.startswith("```python\n    value_") and p.endswith("\n```")
    # Every code line survives whole, in order.
    code = [line for p in parts for line in p.split("\n") if line.startswith("    value_")]
    assert code == lines


def test_utf8_bytes_never_cut_a_character() -> None:
    text = "微信公众号的客服消息有长度限制，超过就要分段发送。" * 100
    parts = split_text(text, 2048, "bytes")
    assert all(len(p.encode("utf-8")) <= 2048 for p in parts)
    assert "".join(parts) == text


def test_utf16_units_count_astral_characters_twice() -> None:
    text = "🙂" * 100
    parts = split_text(text, 50, "utf16")
    assert [len(p) for p in parts] == [25, 25, 25, 25]


@pytest.mark.parametrize(("cluster", "limit"), [(FAMILY, 12), (FLAGS, 5), (WAVE, 5), (ACCENT * 3, 4), (HINDI, 4)])
def test_visible_characters_stay_whole(cluster: str, limit: int) -> None:
    text = cluster * 9
    parts = split_text(text, limit)
    assert "".join(parts) == text
    for p in parts:
        assert _whole(p), p


def test_tiny_limits_terminate() -> None:
    text = "```py\ncode line\n```\n" * 5
    for limit in (1, 2, 5, 9):
        parts = split_text(text, limit)
        assert all(len(p) <= limit for p in parts)
    assert split_text("你好", 2, "bytes") == ["你", "好"]  # a character larger than the limit still goes


# --- properties over random replies ----------------------------------------------------------

VOCAB = [
    "the", "model", "answered", "quickly", "你好", "世界", "。", "，", ".", ",", "!", "?", "\n", "\n\n",
    FAMILY, FLAGS[:4], WAVE, ACCENT, HINDI, "😀", "x" * 30, "ﬁ",
]  # fmt: skip


def _reply(rng: random.Random) -> str:
    out: list[str] = []
    for _ in range(rng.randint(1, 300)):
        if rng.random() < 0.03:
            lang = rng.choice(["", "python", "js"])
            body = "\n".join(
                " ".join(rng.choice(VOCAB[:4]) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 30))
            )
            out.append(f"\n```{lang}\n{body}\n```\n")
        else:
            out.append(rng.choice(VOCAB))
            out.append(" " if rng.random() < 0.6 else "")
    return "".join(out)


def _whole(part: str) -> bool:
    first, last = part[0], part[-1]
    if (
        unicodedata.category(first) in ("Mn", "Mc", "Me")
        or first in "\u200d\ufe0f"
        or "\U0001f3fb" <= first <= "\U0001f3ff"
    ):
        return False
    if last == "\u200d":
        return False
    for run in re.findall("[\U0001f1e6-\U0001f1ff]+", part):
        if len(run) % 2:
            return False
    return True


def _normal(text: str) -> str:
    return re.sub(r"\s+", "", re.sub(r"```[a-z]*", "", text))


@pytest.mark.parametrize("unit", ["chars", "bytes", "utf16"])
def test_random_replies_split_within_limits_losing_nothing(unit: str) -> None:
    rng = random.Random(f"split-{unit}")
    for case in range(150):
        text = _reply(rng)
        limit = rng.choice([64, 100, 333, 500, 2048, 4096])
        parts = split_text(text, limit, unit)
        where = f"case {case}, limit {limit}"
        assert all(_measure(p, unit) <= limit for p in parts), where
        assert all(p.strip() for p in parts) or parts == [text], where
        assert "".join(map(_normal, parts)) == _normal(text), where
        assert all(_whole(p) for p in parts if p), where
        assert all(p.count("```") % 2 == 0 for p in parts), where
