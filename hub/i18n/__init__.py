"""Every word the bot says to people, in Simplified Chinese or English (gettext catalogs)."""

from hub.i18n.texts import LANGS, N_, Lang, Texts, texts

__all__ = ["LANGS", "N_", "Lang", "Texts", "texts"]
