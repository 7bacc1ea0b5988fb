"""Tokenisation once per data set, and length-aware batches padded only to the longest row in each batch.

Two rules every entry point (CLI, Python, service) goes through:

* **A text must have content** (:func:`scoreplex.content.has_content`, the one rule): a text that is only
  whitespace, control or zero-width characters tokenises to nothing and would be scored like an empty answer, so it
  is refused like one; the engine's ``on_error="row"`` mode fails only its row.
* **Input size never decides memory**: a text is cut to ``CHARS_PER_TOKEN * max_length`` characters before it is
  tokenised, so one huge answer costs what a ``max_length`` answer costs. The cut is exact (the same tokens as
  tokenising the whole text and truncating) unless the text's first ``max_length`` tokens span more than that many
  characters (e.g. runs of thousands of spaces); a cut text is always counted as truncated.

**Long inputs** (:class:`LongInputs`, a suite setting): ``truncate`` (the default) keeps each response's first
``max_length`` tokens. ``windows`` keeps up to ``max_windows`` overlapping windows of ``max_length`` tokens each (every
window with the tokenizer's first and last special tokens, ``[CLS]`` ... ``[SEP]``), a window starting every
``stride`` tokens; :func:`collate` then returns every window of its rows plus ``windows``, the row each window belongs
to, and the model combines the windows' pooled vectors per response (:func:`pool_windows`: their mean, or with
``pool="mean+max"`` their mean and maximum side by side) before its head. A response that fits in ``max_length``
tokens is one window, encoded and batched exactly as in ``truncate`` mode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scoreplex.content import EMPTY_TEXT, EMPTY_TEXT_FIX, check_texts
from scoreplex.errors import ConfigError, DataError

CHARS_PER_TOKEN = 128
"""Characters kept per token of ``max_length`` before tokenising (a WordPiece token spans at most ~100 characters:
longer words become one unknown token)."""


LONG_INPUT_MODES = ("truncate", "windows")
"""How a response longer than ``max_length`` is encoded (see the module docstring)."""
WINDOW_POOLS = ("mean", "mean+max")
"""How the pooled vectors of a response's windows are combined (:func:`pool_windows`): their mean ``(H,)``, or their
mean and element-wise maximum side by side ``(2H,)``."""


def pooled_width(hidden: int, pool: str) -> int:
    """Width of a response's vector after its windows' ``hidden``-wide vectors are combined by ``pool``: ``2 *
    hidden`` for ``mean+max`` (mean and maximum side by side, :func:`pool_windows`), else ``hidden``."""
    return 2 * hidden if pool == "mean+max" else hidden


@dataclass(frozen=True)
class LongInputs:
    """How a suite encodes responses longer than its ``max_length`` (stored in the manifest as ``long_inputs``).

    Example: ``LongInputs("windows", stride=64)`` encodes a 300-token response at ``max_length`` 128 as windows of
    126 body tokens starting every 64 tokens (the last one aligned to the end), each wrapped in ``[CLS]``/``[SEP]``.
    """

    mode: str = "truncate"
    """``truncate`` (keep the first ``max_length`` tokens; the default and the fast path) or ``windows``."""
    stride: int | None = None
    """Windows mode: tokens between the starts of two windows (< the window's body overlaps them); None: half a
    window's body, rounded down."""
    pool: str = "mean"
    """Windows mode: how the windows' pooled vectors are combined per response: ``mean``, or ``mean+max`` (the mean
    and the element-wise maximum concatenated, so each task's head reads ``2H`` features; chosen on validation in
    ``benchmarks/window_pooling.py``). Truncate mode ignores it."""
    max_windows: int = 16
    """Windows mode: at most this many windows per response (memory and time bound); tokens beyond them are cut
    and the response counts as cut."""

    def feature_width(self, hidden: int) -> int:
        """Width of the pooled features a task's head reads, for a backbone of ``hidden`` units: ``2 * hidden`` in
        windows mode pooled ``mean+max``, else ``hidden``."""
        return pooled_width(hidden, self.pool) if self.windowed else hidden

    def __post_init__(self) -> None:
        if self.mode not in LONG_INPUT_MODES:
            raise ConfigError(
                f"long-input mode {self.mode!r} is unknown; choose one of: {', '.join(LONG_INPUT_MODES)}."
            )
        if self.pool not in WINDOW_POOLS:
            raise ConfigError(f"window pooling {self.pool!r} is unknown; choose one of: {', '.join(WINDOW_POOLS)}.")
        if self.stride is not None and (
            not isinstance(self.stride, int) or isinstance(self.stride, bool) or self.stride < 1
        ):
            raise ConfigError(f"window stride={self.stride!r}; give a token count >= 1 (e.g. 64), or None.")
        if not isinstance(self.max_windows, int) or isinstance(self.max_windows, bool) or self.max_windows < 1:
            raise ConfigError(f"max_windows={self.max_windows!r}; give a window count >= 1, e.g. 16.")

    @property
    def windowed(self) -> bool:
        """True when long responses are encoded as several windows."""
        return self.mode == "windows"

    @property
    def window_pool(self) -> str:
        """The pooling the suite's heads read: :attr:`pool` in windows mode, ``mean`` when truncating."""
        return self.pool if self.windowed else "mean"

    def step(self, max_length: int, n_special: int = 2) -> int:
        """Tokens between window starts at ``max_length``; ConfigError if the stride is longer than a window's
        body (``max_length - n_special`` tokens), which would skip tokens."""
        body = max_length - n_special
        if body < 1:
            raise ConfigError(f"max_length={max_length} leaves no room for tokens between the special tokens.")
        step = self.stride if self.stride is not None else max(1, body // 2)
        if step > body:
            raise ConfigError(
                f"window stride {step} is longer than a window's {body} tokens at max_length {max_length}, so tokens "
                f"between windows would be skipped; give --window-stride {body} or less (e.g. {max(1, body // 2)})."
            )
        return step

    def describe(self, max_length: int) -> str:
        """``"truncate"`` or e.g. ``"windows (stride 64, mean of at most 16)"``, for the CLI."""
        if not self.windowed:
            return self.mode
        return f"{self.mode} (stride {self.step(max_length)}, {self.pool} of at most {self.max_windows})"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "stride": self.stride, "pool": self.pool, "max_windows": self.max_windows}

    @classmethod
    def from_dict(cls, record: Any) -> LongInputs:
        """From a manifest's ``long_inputs`` (None: truncate); ConfigError for a record of another shape."""
        if record is None:
            return cls()
        if not isinstance(record, dict) or set(record) - {"mode", "stride", "pool", "max_windows"}:
            raise ConfigError(
                f"long_inputs should be an object with mode, stride, pool and max_windows, found {str(record)[:80]!r}."
            )
        return cls(**record)


TRUNCATE = LongInputs()


@dataclass(frozen=True)
class LengthCounts:
    """How many responses exceeded ``max_length``, and what happened to them (``truncate``: cut; ``windows``:
    encoded as several windows, cut only beyond ``max_windows``)."""

    responses: int = 0
    """Responses counted."""
    cut: int = 0
    """Responses of which tokens were dropped."""
    windowed: int = 0
    """Responses encoded as more than one window (windows mode)."""

    def __add__(self, other: LengthCounts) -> LengthCounts:
        return LengthCounts(self.responses + other.responses, self.cut + other.cut, self.windowed + other.windowed)

    def __sub__(self, other: LengthCounts) -> LengthCounts:
        return LengthCounts(self.responses - other.responses, self.cut - other.cut, self.windowed - other.windowed)

    @property
    def cut_share(self) -> float:
        """Share of responses cut (0.0 without responses)."""
        return self.cut / self.responses if self.responses else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "responses": self.responses,
            "cut": self.cut,
            "cut_share": self.cut_share,
            "windowed": self.windowed,
        }

    @classmethod
    def from_dict(cls, record: Any) -> LengthCounts | None:
        """From :meth:`to_dict`'s record (None when absent or of another shape: an old or foreign suite)."""
        try:
            return cls(int(record["responses"]), int(record["cut"]), int(record.get("windowed", 0)))
        except (TypeError, KeyError, ValueError):
            return None

    def describe(self, max_length: int, long_inputs: LongInputs = TRUNCATE) -> str:
        """One line for the CLI, e.g. ``"truncation: 12 of 40 responses (30.0%) cut at max_length 48"``."""
        line = (
            f"truncation: {self.cut} of {self.responses} responses ({100 * self.cut_share:.1f}%) cut at max_length "
            f"{max_length}"
        )
        if long_inputs.windowed:
            line = (
                f"long inputs: {self.windowed} of {self.responses} responses longer than max_length {max_length} "
                f"encoded as {long_inputs.describe(max_length)}; {self.cut} ({100 * self.cut_share:.1f}%) cut beyond "
                f"{long_inputs.max_windows} windows"
            )
        return line


@dataclass
class Encoded:
    """Token ids of every response (unpadded), with labels ``(N, D)`` or None.

    In windows mode (``window`` set) ``input_ids`` holds each response's tokens beyond ``max_length`` too (up to
    ``max_windows`` windows' worth) and :func:`collate` cuts them into windows."""

    input_ids: list[list[int]]
    labels: np.ndarray | None
    pad_id: int
    truncated: int = 0
    """How many responses were cut (at max_length; in windows mode, beyond ``max_windows`` windows)."""
    window: tuple[int, int] | None = None
    """``(max_length, stride)`` in windows mode; None: every row is already at most ``max_length`` tokens."""
    windowed: int = 0
    """How many responses span more than one window."""
    n_tokens: np.ndarray | None = None
    """Each response's token count before any cut ``(N,)`` (within the character cap), for the length feature."""
    _lengths: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens each row costs an encoder pass: its length, or in windows mode its windows x ``max_length``."""
        if self._lengths is None:
            n = np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))
            if self.window is not None:
                max_length, step = self.window
                n = np.where(n > max_length, window_count(n, max_length, step) * max_length, n)
            self._lengths = n
        return self._lengths

    @property
    def counts(self) -> LengthCounts:
        return LengthCounts(len(self), self.truncated, self.windowed)


def window_count(length, max_length: int, step: int, n_special: int = 2):
    """Windows of ``max_length`` tokens (``n_special`` of them special) starting every ``step`` tokens that cover a
    response of ``length`` tokens (special tokens included); works on ints and integer arrays."""
    body = max_length - n_special
    rest = np.maximum(np.asarray(length) - n_special - body, 0)
    return 1 + (rest + step - 1) // step


def window_starts(length: int, max_length: int, step: int, n_special: int = 2) -> list[int]:
    """Start offsets (into the response's body tokens) of its windows: every ``step`` tokens, the last one moved back
    so that it ends with the body (all windows are full; the last may overlap its neighbour more)."""
    body, total = max_length - n_special, length - n_special
    n = int(window_count(length, max_length, step, n_special))
    return [min(i * step, total - body) for i in range(n)] if total > body else [0]


def encode_texts(
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    labels: np.ndarray | None = None,
    *,
    checked: bool = False,
    long_inputs: LongInputs = TRUNCATE,
) -> Encoded:
    """Tokenise ``texts`` with special tokens, truncating to ``max_length`` (memory bounded by ``max_length``, see the
    module docstring); counts what was truncated. DataError (row = 0-based index) for a text without content, unless
    ``checked`` says the caller already applied :func:`scoreplex.content.problem_rows` (the engine does, per row).

    ``long_inputs`` in windows mode keeps up to ``max_windows`` windows' worth of tokens per response (the memory
    bound grows accordingly) for :func:`collate` to cut into windows."""
    if not checked:
        check_texts(texts)
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    keep, window = max_length, None
    if long_inputs.windowed:
        if n_special != 2:
            raise ConfigError(
                f"windows mode wraps each window in one leading and one trailing special token ([CLS] ... [SEP]); "
                f"this tokenizer adds {n_special}. Train the suite with --long-inputs truncate."
            )
        step = long_inputs.step(max_length)
        keep = max_length + (long_inputs.max_windows - 1) * step  # the tokens max_windows windows cover
        window = (max_length, step)
    cap = CHARS_PER_TOKEN * keep
    full = tokenizer([t[:cap] for t in texts], add_special_tokens=True, truncation=False)["input_ids"]
    for i, x in enumerate(full):
        if len(x) <= n_special:  # visible characters the tokenizer drops entirely
            raise DataError(EMPTY_TEXT, row=i, fix=EMPTY_TEXT_FIX)
    truncated = sum(len(x) > keep or len(t) > cap for x, t in zip(full, texts, strict=True))
    ids = [x if len(x) <= keep else x[: keep - 1] + [x[-1]] for x in full]  # keep the [SEP]
    windowed = sum(len(x) > max_length for x in ids) if window is not None else 0
    n_tokens = np.fromiter((len(x) for x in full), dtype=np.int64, count=len(full))
    return Encoded(ids, labels, int(tokenizer.pad_token_id or 0), truncated, window, windowed, n_tokens)


def length_counts(tokenizer, texts: Sequence[str], max_length: int, long_inputs: LongInputs = TRUNCATE) -> LengthCounts:
    """How many of ``texts`` exceed ``max_length`` tokens and are cut (or, in windows mode, windowed and cut beyond
    ``max_windows``), as :func:`encode_texts` would encode them; for reports (``train``, ``info``)."""
    return counts_of_lengths(token_lengths(tokenizer, texts), max_length, long_inputs)


def counts_of_lengths(lengths: np.ndarray, max_length: int, long_inputs: LongInputs = TRUNCATE) -> LengthCounts:
    """:func:`length_counts` from token lengths ``(N,)`` (special tokens included, :func:`token_lengths`)."""
    lengths = np.asarray(lengths)
    if not long_inputs.windowed:
        return LengthCounts(len(lengths), int((lengths > max_length).sum()), 0)
    keep = max_length + (long_inputs.max_windows - 1) * long_inputs.step(max_length)
    return LengthCounts(len(lengths), int((lengths > keep).sum()), int((lengths > max_length).sum()))


def window_mean(pooled: torch.Tensor, owner: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean of the windows' pooled vectors per response: ``pooled (W, H)``, ``owner (W,)`` the row of each window in
    ``0..n_rows-1`` -> ``(n_rows, H)``. A row with one window gets that window's vector exactly."""
    total = pooled.new_zeros((n_rows, pooled.shape[-1])).index_add_(0, owner, pooled)  # (B, H)
    count = torch.bincount(owner, minlength=n_rows).clamp_min(1).to(pooled.dtype)  # (B,)
    return total / count[:, None]


def pool_windows(pooled: torch.Tensor, owner: torch.Tensor | None, n_rows: int, how: str = "mean") -> torch.Tensor:
    """Combine the windows' pooled vectors ``pooled (W, H)`` per response (``owner (W,)``: the row of each window in
    ``0..n_rows-1``; None: one window per row, ``W == n_rows``) as :data:`WINDOW_POOLS` names: ``mean`` -> ``(n_rows,
    H)`` (:func:`window_mean`); ``mean+max`` -> ``(n_rows, 2H)``, the mean then the element-wise maximum (a row with
    one window gets its vector twice). ConfigError for another name."""
    if how not in WINDOW_POOLS:
        raise ConfigError(f"window pooling {how!r} is unknown; choose one of: {', '.join(WINDOW_POOLS)}.")
    if owner is None:
        return pooled if how == "mean" else torch.cat([pooled, pooled], dim=1)
    mean = window_mean(pooled, owner, n_rows)  # (B, H)
    if how == "mean":
        return mean
    index = owner[:, None].expand(-1, pooled.shape[1])  # (W, H)
    top = pooled.new_zeros((n_rows, pooled.shape[1])).scatter_reduce(0, index, pooled, "amax", include_self=False)
    return torch.cat([mean, top], dim=1)  # (B, 2H)


def pair_template(tokenizer) -> tuple[list[int], list[int], list[int]]:
    """The special tokens a tokenizer puts before, between and after a text pair (BERT: ``[CLS]``, ``[SEP]``,
    ``[SEP]``), read off its own encoding of a two-word pair (fast tokenizers no longer build pairs from ids)."""
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    b = tokenizer("b", add_special_tokens=False)["input_ids"]
    both = tokenizer("a", "b")["input_ids"]
    i = next(k for k in range(len(both)) if both[k : k + len(a)] == a)
    j = next(k for k in range(i + len(a), len(both)) if both[k : k + len(b)] == b)
    return both[:i], both[i + len(a) : j], both[j + len(b) :]


def encode_pairs(
    tokenizer,
    first: str,
    texts: Sequence[str],
    max_length: int,
    labels: np.ndarray | None = None,
    *,
    checked: bool = False,
    first_share: float = 0.25,
) -> Encoded:
    """Tokenise each response of ``texts`` after the same ``first`` text (an item's question, reference answer or
    rubric) as a text pair ``[CLS] first [SEP] text [SEP]`` (the tokenizer's own pair template), cut to ``max_length``.

    The question is cut first: a pair that does not fit keeps the whole response when it can, down to a question of
    ``first_share`` of the budget (or the whole question, if shorter); only then is the response cut (its end). The
    question keeps its *last* tokens, since an item's question usually ends with what it asks (ASAP-SAS items 1, 2
    and 10 give the procedure first). ``truncated`` counts the responses cut, not questions. An empty ``first`` gives
    :func:`encode_texts`. DataError (row = 0-based index) for a text without content, as :func:`encode_texts`.
    ``n_tokens`` is each *response's* token count before any cut, with a single text's special tokens (as
    :func:`encode_texts` counts it): the length feature reads the response, not the question.
    """
    if not first.strip():
        return encode_texts(tokenizer, texts, max_length, labels, checked=checked)
    if not checked:
        check_texts(texts)
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 2:
        raise ConfigError(f"max_length={max_length} leaves no room for a question and a response; give 16 or more.")
    cap = CHARS_PER_TOKEN * max_length
    question = tokenizer(first[-cap:], add_special_tokens=False)["input_ids"]
    responses = tokenizer([t[:cap] for t in texts], add_special_tokens=False, truncation=False)["input_ids"]
    prefix, middle, suffix = pair_template(tokenizer)
    floor = min(len(question), max(1, int(first_share * budget)))
    ids, truncated = [], 0
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    n_tokens = np.fromiter((len(r) + n_special for r in responses), dtype=np.int64, count=len(responses))
    for i, (r, t) in enumerate(zip(responses, texts, strict=True)):
        if not r:  # visible characters the tokenizer drops entirely
            raise DataError(EMPTY_TEXT, row=i, fix=EMPTY_TEXT_FIX)
        keep_r = min(len(r), budget - floor)
        keep_q = min(len(question), budget - keep_r)
        truncated += keep_r < len(r) or len(t) > cap
        q = question[len(question) - keep_q :]
        ids.append(prefix + q + middle + r[:keep_r] + suffix)
    return Encoded(ids, labels, int(tokenizer.pad_token_id or 0), truncated, n_tokens=n_tokens)


def token_lengths(tokenizer, texts: Sequence[str], *, max_chars: int | None = 1 << 16) -> np.ndarray:
    """Length in tokens (with special tokens) of each text, untruncated within its first ``max_chars`` characters
    (None: whole texts; the default bounds memory while covering any length up to 512 tokens)."""
    ids = tokenizer([t[:max_chars] if max_chars else t for t in texts], add_special_tokens=True, truncation=False)
    return np.array([len(x) for x in ids["input_ids"]], dtype=np.int64)


def choose_max_length(lengths: np.ndarray, *, quantile: float = 0.99, multiple: int = 8, cap: int = 512) -> int:
    """Smallest multiple of ``multiple`` covering ``quantile`` of the lengths, capped at ``cap``.

    The quantile is the empirical one (``inverted_cdf``), so at most ``1 - quantile`` of the lengths exceed the result
    unless ``cap`` cuts it; an interpolated quantile could leave a few more responses truncated.
    """
    q = float(np.quantile(lengths, quantile, method="inverted_cdf")) if len(lengths) else 16.0
    return int(min(cap, max(multiple, int(np.ceil(q / multiple)) * multiple)))


def _windows(enc: Encoded, index: Sequence[int]) -> tuple[list[list[int]], list[int]]:
    """Every window of the rows ``index`` (windows mode) and the batch row each belongs to."""
    max_length, step = enc.window
    body = max_length - 2
    rows, owner = [], []
    for j, i in enumerate(index):
        x = enc.input_ids[i]
        if len(x) <= max_length:
            rows.append(x)
            owner.append(j)
            continue
        head, inner, tail = x[:1], x[1:-1], x[-1:]
        for start in window_starts(len(x), max_length, step):
            rows.append(head + inner[start : start + body] + tail)
            owner.append(j)
    return rows, owner


def collate(enc: Encoded, index: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad the rows ``index`` to their own longest length.

    In windows mode, when a row spans several windows, the batch holds every window ``(W, T)`` and ``windows (W,)``,
    the position in ``index`` of each window's response (for :func:`window_mean`); labels stay one per response.
    ``n_tokens (B,)`` is each response's token count before any cut (for a head with the length feature)."""
    rows = [enc.input_ids[i] for i in index]
    owner = None
    if enc.window is not None and any(len(r) > enc.window[0] for r in rows):
        rows, owner = _windows(enc, index)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), enc.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if enc.n_tokens is not None:
        batch["n_tokens"] = torch.as_tensor(enc.n_tokens[np.asarray(index)])
    if owner is not None:
        batch["windows"] = torch.tensor(owner, dtype=torch.long)
    if enc.labels is not None:
        batch["labels"] = torch.as_tensor(enc.labels[np.asarray(index)], dtype=torch.long)
    return batch


def train_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: shuffle, sort within pools of ``pool`` batches, shuffle the batches."""
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def eval_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Batches in length order (least padding); callers scatter results back by index."""
    order = np.argsort(lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


DEFAULT_MAX_TOKENS = 1024
"""Padded tokens per encoder pass for inference. On 2 CPU cores MiniLM runs real ASAP-SAS responses about 2x faster
in length-sorted micro-batches of ~1,024 padded tokens than in 32-row batches padded to their longest row (less
padding, and activations that stay in cache): measured 160 vs 82 responses/s."""


def token_batches(lengths: np.ndarray, *, max_rows: int, max_tokens: int | None = DEFAULT_MAX_TOKENS):
    """Length-sorted inference batches of at most ``max_rows`` rows and ``max_tokens`` padded tokens
    (rows x the longest row); a row longer than the budget gets a batch of its own. ``max_tokens=None`` gives
    plain ``max_rows`` batches in length order."""
    order = np.argsort(lengths, kind="stable")
    batch: list[int] = []
    for i in order:
        longest = int(lengths[i])  # sorted ascending: the new row is the longest so far
        if batch and (len(batch) >= max_rows or (max_tokens is not None and (len(batch) + 1) * longest > max_tokens)):
            yield np.asarray(batch)
            batch = []
        batch.append(int(i))
    if batch:
        yield np.asarray(batch)
