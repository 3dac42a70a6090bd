"""`/lang [zh|en]`: the language the bot answers this chat in."""

from __future__ import annotations

from hub.i18n import N_, Lang, texts
from hub.i18n.language import BOT, HINT, PERSONA, PLATFORM, SET, ChatLanguages, from_tag
from hub.routing.context import Context
from hub.storage.chats import ChatRepo

NAMES: dict[Lang, str] = {"zh": "中文", "en": "English"}
# Why the chat is answered in its language, when /lang did not set it.
WHY = {
    SET: N_("This chat's language is %(language)s (set with /lang)."),
    PERSONA: N_("This chat's language is %(language)s (its persona's language)."),
    BOT: N_("This chat's language is %(language)s (this hub's default)."),
    HINT: N_("This chat's language is %(language)s (from your app's language)."),
    PLATFORM: N_("This chat's language is %(language)s (this platform's default)."),
}
FALLBACK = N_("This chat's language is %(language)s.")
# Words people type for "back to the default order".
AUTO = frozenset({"auto", "default", "reset", "自动", "默认"})


def _parse(arg: str) -> Lang | None:
    lowered = arg.strip().lower()
    if lowered in ("中文", "汉语", "简体中文", "chinese"):
        return "zh"
    if lowered in ("英文", "英语", "english"):
        return "en"
    return from_tag(lowered) if lowered in ("zh", "en") or "-" in lowered or "_" in lowered else None


class LanguageSkill:
    def __init__(self, chats: ChatRepo, languages: ChatLanguages) -> None:
        self._chats = chats
        self._languages = languages

    async def __call__(self, ctx: Context) -> None:
        arg = ctx.args.strip()
        ref = str(ctx.event.chat)
        if not arg:
            lang, why = await self._languages.why(ctx.chat, ctx.event.channel, ctx.event.context.get("lang"))
            t = texts(lang)
            shown = t(WHY.get(why, FALLBACK), language=NAMES[lang])
            await ctx.reply(t("%(shown)s\nSwitch with /lang zh or /lang en.", shown=shown))
            return
        if arg.lower() in AUTO:
            await self._chats.update(ref, language=None)
            lang = await self._languages.of_chat(ref, ctx.event.context.get("lang"))
            t = texts(lang)
            await ctx.reply(t("This chat's language now follows the default: %(language)s.", language=NAMES[lang]))
            return
        chosen = _parse(arg)
        if chosen is None:
            await ctx.reply(ctx.t("I speak zh (中文) and en (English): send /lang zh or /lang en."))
            return
        await self._chats.update(ref, language=chosen)
        # Said in the new language: the first words the chat reads in it.
        t = texts(chosen)
        await ctx.reply(t("From now on I answer this chat in %(language)s.", language=NAMES[chosen]))
