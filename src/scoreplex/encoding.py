"""Tokenisation once per data set, and length-aware batches padded only to the longest row in each batch.

Two rules every entry point (CLI, Python, service) goes through:

* **A text must have content** (:func:`scoreplex.content.has_content`, the one rule): a text that is only
  whitespace, control or zero-width characters tokenises to nothing and would be scored like an empty answer, so it
  is refused like one; the engine's ``on_error="row"`` mode fails only its row.
* **Input size never decides memory**: a text is cut to ``CHARS_PER_TOKEN * max_length`` characters before it is
  tokenised, so one huge answer costs what a ``max_length`` answer costs. The cut is exact (the same tokens as
  tokenising the whole text and truncating) unless the text's first ``max_length`` tokens span more than that many
  characters (e.g. runs of thousands of spaces); a cut text is always counted as truncated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from scoreplex.content import EMPTY_TEXT, EMPTY_TEXT_FIX, check_texts
from scoreplex.errors import ConfigError, DataError

CHARS_PER_TOKEN = 128
"""Characters kept per token of ``max_length`` before tokenising (a WordPiece token spans at most ~100 characters:
longer words become one unknown token)."""


@dataclass
class Encoded:
    """Token ids of every response (unpadded), with labels ``(N, D)`` or None."""

    input_ids: list[list[int]]
    labels: np.ndarray | None
    pad_id: int
    truncated: int = 0
    """How many responses were cut at max_length."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode_texts(
    tokenizer, texts: Sequence[str], max_length: int, labels: np.ndarray | None = None, *, checked: bool = False
) -> Encoded:
    """Tokenise ``texts`` with special tokens, truncating to ``max_length`` (memory bounded by ``max_length``, see the
    module docstring); counts what was truncated. DataError (row = 0-based index) for a text without content, unless
    ``checked`` says the caller already applied :func:`scoreplex.content.problem_rows` (the engine does, per row)."""
    if not checked:
        check_texts(texts)
    cap = CHARS_PER_TOKEN * max_length
    full = tokenizer([t[:cap] for t in texts], add_special_tokens=True, truncation=False)["input_ids"]
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    for i, x in enumerate(full):
        if len(x) <= n_special:  # visible characters the tokenizer drops entirely
            raise DataError(EMPTY_TEXT, row=i, fix=EMPTY_TEXT_FIX)
    truncated = sum(len(x) > max_length or len(t) > cap for x, t in zip(full, texts, strict=True))
    ids = [x if len(x) <= max_length else x[: max_length - 1] + [x[-1]] for x in full]  # keep the [SEP]
    return Encoded(ids, labels, int(tokenizer.pad_token_id or 0), truncated)


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
    for i, (r, t) in enumerate(zip(responses, texts, strict=True)):
        if not r:  # visible characters the tokenizer drops entirely
            raise DataError(EMPTY_TEXT, row=i, fix=EMPTY_TEXT_FIX)
        keep_r = min(len(r), budget - floor)
        keep_q = min(len(question), budget - keep_r)
        truncated += keep_r < len(r) or len(t) > cap
        q = question[len(question) - keep_q :]
        ids.append(prefix + q + middle + r[:keep_r] + suffix)
    return Encoded(ids, labels, int(tokenizer.pad_token_id or 0), truncated)


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


def collate(enc: Encoded, index: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad the rows ``index`` to their own longest length."""
    rows = [enc.input_ids[i] for i in index]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), enc.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
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
