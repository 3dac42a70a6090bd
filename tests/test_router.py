from dataclasses import dataclass, field

import pytest

from hub.events import ChatRef, Event, Message, User
from hub.routing.commands import parse_command
from hub.routing.context import Context, ReplyStream
from hub.routing.router import Router
from hub.storage.chats import ChatSettings


@pytest.mark.parametrize(
    "text,name,args,mention,foreign",
    [
        ("/help", "help", "", None, False),
        ("/video a piglet singing", "video", "a piglet singing", None, False),
        ("/video@MyBot a cat", "video", "a cat", "MyBot", False),
        ("/video@mybot a cat", "video", "a cat", "mybot", False),
        ("/video@OtherBot a cat", "video", "a cat", "OtherBot", True),
        ("  /HELP  ", "help", "", None, False),
        ("/视频 小猪", "video", "小猪", None, False),
        ("／help", "help", "", None, False),
        ("/image\na red fox", "image", "a red fox", None, False),
    ],
)
def test_parse_command(text: str, name: str, args: str, mention: str | None, foreign: bool) -> None:
    cmd = parse_command(text, ["MyBot"], {"视频": "video"})
    assert cmd is not None
    assert (cmd.name, cmd.args, cmd.mention, cmd.foreign) == (name, args, mention, foreign)


@pytest.mark.parametrize("text", ["hello", "", "/", " / x", "http://x/y"])
def test_not_a_command(text: str) -> None:
    assert parse_command(text) is None


@dataclass
class _Replier:
    sent: list[str] = field(default_factory=list)

    async def reply(self, message: Message, *, quote: bool = True) -> None:
        self.sent.append(message.text)

    def stream(self) -> ReplyStream:
        raise AssertionError("not used")

    async def action(self, kind: str = "typing") -> None:
        pass


def _router(
    banned: set[str] = frozenset(), admins: set[str] = frozenset(), off: frozenset[str] = frozenset()
) -> Router:
    async def chat_settings(ref: str) -> ChatSettings:
        return ChatSettings(ref, skills_off=off)

    async def is_admin(u: str) -> bool:
        return u in admins

    async def is_banned(u: str) -> bool:
        return u in banned

    r = Router(
        aliases={}, bot_names=lambda _c: ["MyBot"], chat_settings=chat_settings, is_admin=is_admin, is_banned=is_banned
    )

    async def echo(ctx: Context) -> None:
        await ctx.reply(f"chat:{ctx.args}")

    async def video(ctx: Context) -> None:
        await ctx.reply(f"video:{ctx.args}")

    async def boom(ctx: Context) -> None:
        raise RuntimeError("kaput")

    async def secret(ctx: Context) -> None:
        await ctx.reply("secret")

    r.set_fallback(echo)
    r.register("help", r.help_skill, description="list the commands you may use")
    r.register("video", video, description="make a video", usage="/video <prompt>", skill="video")
    r.register("boom", boom, description="fails")
    r.register("admin", secret, description="admin things", admin_only=True)
    return r


def _event(
    text: str, *, group: bool = False, mention: bool = False, user: str = "1", reply_to_bot: bool = False
) -> Event:
    return Event(
        id="e1",
        channel="fake",
        chat=ChatRef("fake", "group" if group else "private", "c1"),
        sender=User("fake", user),
        message=Message.of(text),
        mentions_bot=mention,
        reply_to_bot=reply_to_bot,
    )


async def _run(router: Router, ev: Event) -> list[str]:
    rep = _Replier()
    await router.handle(ev, rep)
    return rep.sent


async def test_group_plain_text_needs_mention_or_reply() -> None:
    r = _router()
    assert await _run(r, _event("hi", group=True)) == []
    assert await _run(r, _event("hi", group=True, mention=True)) == ["chat:hi"]
    assert await _run(r, _event("hi", group=True, reply_to_bot=True)) == ["chat:hi"]
    assert await _run(r, _event("hi")) == ["chat:hi"]


async def test_commands_work_in_groups_without_mention_but_not_for_other_bots() -> None:
    r = _router()
    assert await _run(r, _event("/video@MyBot a cat", group=True)) == ["video:a cat"]
    assert await _run(r, _event("/video@OtherBot a cat", group=True)) == []


async def test_banned_user_is_ignored() -> None:
    r = _router(banned={"fake:9"})
    assert await _run(r, _event("/help", user="9")) == []
    assert await _run(r, _event("hello", user="9")) == []


async def test_unknown_command_gets_a_helpful_answer() -> None:
    out = await _run(_router(), _event("/nope"))
    assert len(out) == 1 and "/nope" in out[0] and "/help" in out[0]


async def test_failing_skill_gets_an_apology_and_nothing_else_stops() -> None:
    r = _router()
    out = await _run(r, _event("/boom"))
    assert len(out) == 1 and "sorry" in out[0].lower()
    assert await _run(r, _event("/video x")) == ["video:x"]


async def test_help_lists_exactly_what_this_person_may_use() -> None:
    r = _router(admins={"fake:1"})
    admin_help = (await _run(r, _event("/help", user="1")))[0]
    user_help = (await _run(r, _event("/help", user="2")))[0]
    assert "/admin" in admin_help and "/admin" not in user_help
    assert "/video" in user_help
    off = _router(off=frozenset({"video"}))
    assert "/video" not in (await _run(off, _event("/help")))[0]


async def test_admin_only_is_refused_to_others_and_hooks_see_it() -> None:
    r = _router(admins={"fake:1"})
    seen: list[str] = []

    async def hook(ctx: Context, reason: str) -> None:
        seen.append(f"{ctx.user}:{reason}")

    r.on_refusal(hook)
    assert await _run(r, _event("/admin", user="1")) == ["secret"]
    refused = await _run(r, _event("/admin", user="2"))
    assert refused != ["secret"] and "admin" in refused[0].lower()
    assert seen == ["fake:2:not an admin"]


async def test_skill_switched_off_in_chat() -> None:
    out = await _run(_router(off=frozenset({"video"})), _event("/video x"))
    assert out and "switched off" in out[0]


async def test_middleware_wraps_skills_in_order() -> None:
    r = _router()
    order: list[str] = []

    async def outer(call_next, event, ctx):  # type: ignore[no-untyped-def]
        order.append("outer")
        await call_next(event, ctx)

    async def inner(call_next, event, ctx):  # type: ignore[no-untyped-def]
        order.append(f"inner:{ctx.skill}")
        await call_next(event, ctx)

    r.use(outer)
    r.use(inner)
    assert await _run(r, _event("/video x")) == ["video:x"]
    assert order == ["outer", "inner:video"]


async def test_refusals_pass_through_the_middlewares_with_no_skill() -> None:
    r = _router(off=frozenset({"video"}))
    seen: list[str] = []

    async def gate(call_next, event, ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.skill)
        if ctx.user == "fake:stranger":
            await ctx.reply("pairing code ABC123")
            return
        await call_next(event, ctx)

    r.use(gate)
    # Someone the policy keeps out hears the policy, not "unknown command".
    assert await _run(r, _event("/nope", user="stranger")) == ["pairing code ABC123"]
    assert await _run(r, _event("/admin", user="stranger")) == ["pairing code ABC123"]
    # Refusals carry no skill name, so a quota middleware never counts them.
    assert "switched off" in (await _run(r, _event("/video x")))[0]
    assert seen == ["", "", ""]
