"""Extract the texts from the source, update the catalogs, check them (needs Babel: the test tools).

    python -m hub.i18n.catalogs update   # hub.pot from the source; each hub.po updated; hub.mo compiled
    python -m hub.i18n.catalogs check    # CI: exit 1 on a text missing, empty, fuzzy or stale anywhere

English msgids are the English texts, so `update` fills the English catalog itself; every
Chinese text is written by hand, and `check` fails until it is.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po, write_po

from hub.i18n.texts import DOMAIN, LANGS, LOCALE_DIR

SOURCE = Path(__file__).resolve().parent.parent
# `t("...")` and `Texts.plural(one, many, n)`, and `N_("...")` where a text is only defined.
KEYWORDS = {"t": None, "plural": (1, 2), "N_": None}
LOCALES = {"zh": "zh_Hans_CN", "en": "en"}
POT = LOCALE_DIR / f"{DOMAIN}.pot"
# Fixed header values: the files change only when a text does.
HEADER = {
    "project": "hub",
    "domain": DOMAIN,
    "fuzzy": False,
    "header_comment": "# Hub's texts. Edit the msgstr lines; `python -m hub.i18n.catalogs update` does the rest.",
    "msgid_bugs_address": "",
    "copyright_holder": "",
    "last_translator": "",
    "language_team": "",
    "creation_date": datetime(2026, 12, 1, tzinfo=UTC),
    "revision_date": datetime(2026, 12, 1, tzinfo=UTC),
}


def _po(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def extract() -> Catalog:
    template = Catalog(**HEADER)  # type: ignore[arg-type]
    found = extract_from_dir(
        str(SOURCE),
        method_map=[("**.py", "python")],
        keywords=KEYWORDS,
        comment_tags=("i18n:",),
        strip_comment_tags=True,
    )
    for filename, lineno, message, comments, context in found:
        if filename.startswith("i18n/"):
            continue
        template.add(message, None, [(f"hub/{filename}", lineno)], auto_comments=comments, context=context)
    return template


def _read(path: Path, lang: str) -> Catalog:
    if path.exists():
        with path.open("rb") as f:
            catalog = read_po(f, locale=LOCALES[lang], domain=DOMAIN)
    else:
        catalog = Catalog(locale=LOCALES[lang])
    for key, value in HEADER.items():
        setattr(catalog, key, value)
    return catalog


def _write_po(path: Path, catalog: Catalog, **kw: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    write_po(buf, catalog, width=100, omit_header=False, sort_output=True, **kw)
    path.write_bytes(buf.getvalue())


def _mo_bytes(catalog: Catalog) -> bytes:
    buf = io.BytesIO()
    write_mo(buf, catalog)
    return buf.getvalue()


def update() -> None:
    template = extract()
    _write_po(POT, template, ignore_obsolete=True, include_lineno=False)
    for lang in LANGS:
        catalog = _read(_po(lang), lang)
        catalog.update(template, no_fuzzy_matching=lang == "en")
        if lang == "en":
            for msg in catalog:
                if msg.id:
                    msg.string = msg.id  # the msgid is the English text
                    msg.flags.discard("fuzzy")
        catalog.obsolete.clear()
        _write_po(_po(lang), catalog, ignore_obsolete=True, include_lineno=False)
        _po(lang).with_suffix(".mo").write_bytes(_mo_bytes(_read(_po(lang), lang)))


def _empty(msg: Message) -> bool:
    strings = msg.string if isinstance(msg.string, tuple | list) else (msg.string,)
    return not strings or any(not s for s in strings)


def _read_mo(path: Path) -> Catalog:
    with path.open("rb") as f:
        return read_mo(f)


def _strings(catalog: Catalog) -> dict[object, object]:
    """What the compiled catalog answers: every translated text (not the header)."""
    return {
        m.id if isinstance(m.id, str) else tuple(m.id): m.string if isinstance(m.string, str) else tuple(m.string or ())
        for m in catalog
        if m.id and not m.fuzzy and not _empty(m)
    }


def problems() -> Iterator[str]:
    template = extract()
    wanted = {m.id if isinstance(m.id, str) else m.id[0] for m in template if m.id}
    for lang in LANGS:
        path = _po(lang)
        if not path.exists():
            yield f"{path}: missing"
            continue
        catalog = _read(path, lang)
        have = {m.id if isinstance(m.id, str) else m.id[0]: m for m in catalog if m.id}
        for msgid in sorted(wanted - have.keys()):
            yield f"{lang}: not in the catalog: {msgid!r}"
        for msgid in sorted(have.keys() - wanted):
            yield f"{lang}: no longer in the source: {msgid!r}"
        for msgid, msg in have.items():
            if msg.fuzzy:
                yield f"{lang}: fuzzy: {msgid!r}"
            elif _empty(msg):
                yield f"{lang}: not translated: {msgid!r}"
        for msg, errors in catalog.check():
            for error in errors:
                yield f"{lang}: {msg.id!r}: {error}"
        mo = path.with_suffix(".mo")
        if not mo.exists() or _strings(_read_mo(mo)) != _strings(catalog):
            yield f"{mo}: out of date with {path.name} (run python -m hub.i18n.catalogs update)"


def main(argv: list[str]) -> int:
    if argv == ["update"]:
        update()
        return 0
    if argv == ["check"]:
        found = list(problems())
        for line in found:
            print(line, file=sys.stderr)
        if found:
            print(f"{len(found)} catalog problem(s); fix hub/i18n/locale/*/LC_MESSAGES/hub.po", file=sys.stderr)
            return 1
        print(f"catalogs complete: {', '.join(LANGS)}")
        return 0
    print("usage: python -m hub.i18n.catalogs update|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
