"""The one rule for a response text without content, used by every entry point (readers, scorers, engine, service).

A text has content when it holds at least one visible character: not whitespace, and not a control, format or
separator character (zero-width spaces and joiners, BOMs, soft hyphens...). A text without content tokenises to
nothing and would be scored like an empty answer, so it is refused like one. Light: no torch at import.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from scoreplex.errors import DataError

EMPTY_TEXT = "the response text is empty or has no visible characters (only whitespace, control or zero-width ones)."
EMPTY_TEXT_FIX = "remove the row or fill in the text (an empty answer is best scored by a rule, not a model)."
_INVISIBLE = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"}


def has_content(text: str) -> bool:
    """True if ``text`` holds at least one visible character (not whitespace, control or format characters)."""
    return any(not c.isspace() and unicodedata.category(c) not in _INVISIBLE for c in text)


INVALID_TEXT = "the response text holds a lone surrogate code point (U+D800-U+DFFF), which is not valid Unicode."
INVALID_TEXT_FIX = "re-encode the text as UTF-8 (a lone surrogate usually comes from a broken \\uXXXX escape)."
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: object) -> tuple[str, str] | None:
    """``(message, fix)`` if ``text`` cannot be scored (not a string, no content, a lone surrogate), else None."""
    if not isinstance(text, str) or not has_content(text):
        return EMPTY_TEXT, EMPTY_TEXT_FIX
    if _SURROGATE.search(text):
        return INVALID_TEXT, INVALID_TEXT_FIX
    return None


def problem_rows(texts: Sequence[str]) -> list[tuple[int, str, str]]:
    """``(index, message, fix)`` of every text that cannot be scored (:func:`text_problem`)."""
    return [(i, *p) for i, t in enumerate(texts) if (p := text_problem(t)) is not None]


def empty_rows(texts: Sequence[str]) -> list[int]:
    """Indices of the texts that cannot be scored (no content, or invalid)."""
    return [i for i, _, _ in problem_rows(texts)]


def check_texts(texts: Sequence[str]) -> None:
    """DataError naming the first row (0-based index) whose text cannot be scored."""
    bad = problem_rows(texts)
    if bad:
        i, message, fix = bad[0]
        raise DataError(message, row=i, fix=fix)
