"""Report languages: English (the msgids themselves) and Brazilian Portuguese (gettext catalog).

The report's words live where they are defined (metric titles, column labels, definitions in
analysis/metrics.py and policy/port25.py, chart labels in analysis/charts.py); renderers pass
each one through a :class:`Translator` at render time. The catalog is
``pt_BR/LC_MESSAGES/spampots.po`` beside this file, compiled to ``spampots.mo`` (scripts/i18n.py).

Strings built with numbers in them ("Per source country (top 20)", the policy's sentence) are
looked up with each number replaced by ``{0}``, ``{1}``...; the numbers are put back in the
locale's style (1,234.5 -> 1.234,5).
"""

from __future__ import annotations

import gettext
import re
from pathlib import Path

DOMAIN = "spampots"
LOCALE_DIR = Path(__file__).parent
# --locale values: pt (the talk's style, kept as an alias) means Brazilian Portuguese.
ALIASES = {"en": "en", "pt": "pt_BR", "pt_BR": "pt_BR", "pt-BR": "pt_BR", "pt_br": "pt_BR"}
CHOICES = ("en", "pt_BR", "pt")
_NUMBER = re.compile(r"\d(?:[\d,.]*\d)?")


def normalize(name: str | None) -> str:
    """'en' or 'pt_BR' for any accepted spelling; ValueError for others."""
    try:
        return ALIASES[name or "en"]
    except KeyError:
        raise ValueError(f"unknown locale {name!r} (choose one of {', '.join(CHOICES)})") from None


def number_style(locale: str | None) -> str:
    """'pt' (1.234,56) or 'en' (1,234.56)."""
    return "pt" if normalize(locale) == "pt_BR" else "en"


def _swap(num: str) -> str:
    return num.translate(str.maketrans({",": ".", ".": ","}))


class Translator:
    """Callable: English text -> the locale's text. Records what it was asked (`asked`) and what
    the catalog lacks (`missing`), so a test can fail on a word left untranslated."""

    def __init__(self, locale: str | None = "en") -> None:
        self.locale = normalize(locale)
        self.asked: set[str] = set()
        self.missing: set[str] = set()
        self._cat: dict[str, str] = {}
        if self.locale != "en":
            tr = gettext.translation(DOMAIN, localedir=str(LOCALE_DIR), languages=[self.locale])
            entries = tr._catalog.items()  # type: ignore[attr-defined]
            self._cat = {k: v for k, v in entries if isinstance(k, str) and k and v}

    def __call__(self, text: str) -> str:
        if not text:
            return text
        self.asked.add(text)
        if text in self._cat:
            return self._cat[text]
        if self.locale == "en":
            return text
        nums = _NUMBER.findall(text)
        key = self.key(text)
        if nums and key in self._cat:
            try:
                return self._cat[key].format(*[_swap(n) for n in nums])
            except (IndexError, KeyError, ValueError):  # a translation with a stray brace: keep English
                pass
        self.missing.add(key)
        return text

    def has(self, text: str) -> bool:
        """Whether the catalog translates `text` (as it is, or as a template with numbers)."""
        return self.locale == "en" or text in self._cat or self.key(text) in self._cat

    @staticmethod
    def key(text: str) -> str:
        """The catalog key of a text with numbers: each number replaced by {0}, {1}..."""
        counter = iter(range(1_000_000))
        return _NUMBER.sub(lambda _m: "{%d}" % next(counter), text)


def catalog_path(locale: str, suffix: str = ".po") -> Path:
    return LOCALE_DIR / normalize(locale) / "LC_MESSAGES" / (DOMAIN + suffix)


def _unquote(s: str) -> str:
    return s.strip()[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape") \
        if s.strip().startswith('"') else ""


def read_po(path: Path) -> dict[str, str]:
    """msgid -> msgstr of a .po file (plain entries: no plurals or contexts, which we do not use)."""
    out: dict[str, str] = {}
    msgid = msgstr = None
    field = None
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if line.startswith("msgid "):
            if msgid is not None:
                out[msgid] = msgstr or ""
            msgid, msgstr, field = _unquote(line[6:]), "", "id"
        elif line.startswith("msgstr "):
            msgstr, field = _unquote(line[7:]), "str"
        elif line.startswith('"') and field == "id":
            msgid = (msgid or "") + _unquote(line)
        elif line.startswith('"') and field == "str":
            msgstr = (msgstr or "") + _unquote(line)
    if msgid is not None:
        out[msgid] = msgstr or ""
    return out


def write_mo(entries: dict[str, str], path: Path) -> None:
    """A GNU .mo file of the translated entries (the header's "" entry included), as msgfmt writes."""
    import struct

    items = sorted((k.encode(), v.encode()) for k, v in entries.items() if v)
    ids = b"".join(k + b"\0" for k, _ in items)
    strs = b"".join(v + b"\0" for _, v in items)
    n = len(items)
    keystart = 7 * 4 + 16 * n
    valuestart = keystart + len(ids)
    koffsets, voffsets, ko, vo = [], [], 0, 0
    for k, v in items:
        koffsets += [len(k), keystart + ko]
        voffsets += [len(v), valuestart + vo]
        ko += len(k) + 1
        vo += len(v) + 1
    head = struct.pack("Iiiiiii", 0x950412DE, 0, n, 7 * 4, 7 * 4 + 8 * n, 0, 0)
    path.write_bytes(head + struct.pack(f"{2 * n}i", *koffsets) + struct.pack(f"{2 * n}i", *voffsets) + ids + strs)


__all__ = ["Translator", "normalize", "number_style", "read_po", "write_mo", "catalog_path", "CHOICES", "ALIASES"]
