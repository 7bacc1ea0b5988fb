"""The one rule for a response text without content, used by every entry point (readers, scorers, engine, service).

A text has content when it holds at least one visible character: not whitespace, and not a control, format or
separator character (zero-width spaces and joiners, BOMs, soft hyphens...). A text without content tokenises to
nothing and would be scored like an empty answer, so it is refused like one. Light: no torch at import.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from scoreplex.errors import DataError

EMPTY_TEXT = "the response text is empty or has no visible characters (only whitespace, control or zero-width ones)."
EMPTY_TEXT_FIX = "remove the row or fill in the text (an empty answer is best scored by a rule, not a model)."
_INVISIBLE = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"}


def has_content(text: str) -> bool:
    """True if ``text`` holds at least one visible character (not whitespace, control or format characters)."""
    return any(not c.isspace() and unicodedata.category(c) not in _INVISIBLE for c in text)


def empty_rows(texts: Sequence[str]) -> list[int]:
    """Indices of the texts without content (:func:`has_content`)."""
    return [i for i, t in enumerate(texts) if not isinstance(t, str) or not has_content(t)]


def check_texts(texts: Sequence[str]) -> None:
    """DataError naming the first row (0-based index) whose text has no content."""
    bad = empty_rows(texts)
    if bad:
        raise DataError(EMPTY_TEXT, row=bad[0], fix=EMPTY_TEXT_FIX)
