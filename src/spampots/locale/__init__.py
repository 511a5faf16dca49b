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
            self._cat = {k: v for k, v in tr._catalog.items() if isinstance(k, str) and k and v}  # type: ignore[attr-defined]

    @property
    def catalog(self) -> dict[str, str]:
        return dict(self._cat)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if text in self._cat:
            self.asked.add(text)
            return self._cat[text]
        nums = _NUMBER.findall(text)
        key = text
        if nums:
            it = iter(range(len(nums)))
            key = _NUMBER.sub(lambda _m: "{%d}" % next(it), text)
        self.asked.add(key)
        if self.locale == "en":
            return text
        if key in self._cat and nums:
            style = [_swap(n) for n in nums]
            return self._cat[key].format(*style)
        self.missing.add(key)
        return text

    def has(self, text: str) -> bool:
        """Whether the catalog translates `text` (directly or as a template with numbers)."""
        if self.locale == "en" or text in self._cat:
            return True
        return bool(_NUMBER.search(text)) and self._template(text) in self._cat

    @staticmethod
    def _template(text: str) -> str:
        counter = iter(range(10_000))
        return _NUMBER.sub(lambda _m: "{%d}" % next(counter), text)


def translator(locale: str | None = "en") -> Translator:
    return Translator(locale)


__all__ = ["Translator", "translator", "normalize", "number_style", "CHOICES", "ALIASES"]
