"""The messages sent to a chat model: the persona's injection, then the chat's history.

The persona goes in as the seed system did it: a system message naming the character's
settings, then (when `restate` is on, for models that ignore the system role) a user turn
restating who the model is, answered by the persona's greeting as an assistant turn. The
history follows, and the new user turn last: turns alternate, as some chat templates require.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hub.storage.memory import Turn, estimate_tokens
from hub.storage.personas import Persona

Msg = dict[str, str]


@dataclass(frozen=True, slots=True)
class Frame:
    """The persona prompt's wording in one language."""

    intro: str
    settings: str  # the heading of the character's settings
    labels: tuple[tuple[str, str], ...]  # (persona field, label) in order
    sep: str  # between label and value
    knowledge: str
    restate: str
    greeting: str  # when the persona has none
    group: str


FRAMES = {
    "zh": Frame(
        intro="你正在扮演以下角色，必须完全以这个身份说话。",
        settings="【角色设定】",
        labels=(
            ("name", "姓名"),
            ("appearance", "外貌"),
            ("personality", "性格"),
            ("background", "背景故事"),
            ("style", "对话风格"),
        ),
        sep=":",
        knowledge="【知识库】",
        restate="从现在开始，你是{name}，不是其他任何AI。请以这个身份和我对话。",
        greeting="好的，我是{name}。",
        group="这是一个群聊：每条用户消息以说话人的名字开头。",
    ),
    "en": Frame(
        intro="You are playing the following character and must speak entirely as them.",
        settings="[Character] ",
        labels=(
            ("name", "Name"),
            ("appearance", "Appearance"),
            ("personality", "Personality"),
            ("background", "Background"),
            ("style", "Style"),
        ),
        sep=": ",
        knowledge="[Knowledge] ",
        restate="From now on you are {name}, not any other AI. Talk with me as this character.",
        greeting="Understood. I am {name}.",
        group="This is a group chat: each user message starts with the speaker's name.",
    ),
}


def frame_of(persona: Persona | None) -> Frame:
    if persona is None:
        return FRAMES["en"]
    return FRAMES.get(persona.language or "zh", FRAMES["en"])


def system_prompt(persona: Persona | None, *, group: bool = False) -> str | None:
    """The system message; None for a plain assistant in a private chat."""
    frame = frame_of(persona)
    lines: list[str] = []
    if persona is not None:
        fields = " ".join(
            f"{label}{frame.sep}{value}" for key, label in frame.labels if (value := getattr(persona, key).strip())
        )
        lines += [frame.intro, frame.settings + fields]
        if persona.knowledge.strip():
            lines.append(frame.knowledge + persona.knowledge.strip())
    if group:
        lines.append(frame.group)
    return "\n".join(lines) if lines else None


def opening(persona: Persona | None, *, group: bool = False) -> list[Msg]:
    """What comes before the history: the system message and the restatement exchange."""
    out: list[Msg] = []
    system = system_prompt(persona, group=group)
    if system is not None:
        out.append({"role": "system", "content": system})
    if persona is not None and persona.restate:
        frame = frame_of(persona)
        out.append({"role": "user", "content": frame.restate.format(name=persona.name)})
        greeting = persona.greeting.strip() or frame.greeting.format(name=persona.name)
        out.append({"role": "assistant", "content": greeting})
    return out


def tokens_of(messages: Sequence[Msg]) -> int:
    return sum(estimate_tokens(m["content"]) for m in messages)


def build_messages(head: Sequence[Msg], history: Sequence[Turn], user_turn: str) -> list[Msg]:
    """The whole request: the opening, the history (already trimmed), the new user turn."""
    return [*head, *({"role": t.role, "content": t.content} for t in history), {"role": "user", "content": user_turn}]


def reply_reserve(context_length: int, max_tokens: int | None) -> int:
    """Tokens kept free for the answer."""
    if max_tokens is not None:
        return min(max_tokens, context_length // 2)
    return min(1024, context_length // 4)
