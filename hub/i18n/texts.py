"""The message catalogs at run time: compiled `.mo` files read with the standard library.

Msgids are the English sentences with named placeholders (`%(job)s`); `locale/<lang>/LC_MESSAGES/
hub.po` holds each language's sentences and `hub.mo` their compiled form (`python -m
hub.i18n.catalogs update` rebuilds both, `check` is run in CI). Placeholders are filled after
translation, so no sentence is glued together from fragments.
"""

from __future__ import annotations

import gettext
from functools import cache
from pathlib import Path
from typing import Literal, get_args

Lang = Literal["zh", "en"]
LANGS: tuple[Lang, ...] = get_args(Lang)
DOMAIN = "hub"
LOCALE_DIR = Path(__file__).parent / "locale"


def N_(msgid: str) -> str:
    """Mark a text for the catalogs where it is defined; it is translated where it is used."""
    return msgid


class Texts:
    """One language's texts: `t("Cancelled %(job)s.", job="#7f3a")`, `t.plural(one, many, n)`."""

    __slots__ = ("_gt", "lang")

    def __init__(self, lang: Lang, translations: gettext.NullTranslations) -> None:
        self.lang: Lang = lang
        self._gt = translations

    def __call__(self, msgid: str, /, **values: object) -> str:
        text = self._gt.gettext(msgid)
        return text % values if values else text

    def plural(self, singular: str, plural: str, n: int, /, **values: object) -> str:
        """A sentence with a count in it: `%(n)s` is the count."""
        return self._gt.ngettext(singular, plural, n) % {"n": n, **values}

    def __repr__(self) -> str:
        return f"Texts({self.lang!r})"


@cache
def texts(lang: Lang) -> Texts:
    """The texts of `lang` (a missing catalog falls back to the English msgids)."""
    translations = gettext.translation(DOMAIN, LOCALE_DIR, languages=[lang], fallback=True)
    return Texts(lang, translations)
