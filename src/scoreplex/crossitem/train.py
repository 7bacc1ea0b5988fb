"""Train the cross-item scorer on every item at once, save it as a suite, and add new items to it.

The objective is each row's rubric loss through its own item's head (rows of a mixed batch weighted by their share),
run by the one training loop (:func:`scoreplex.training.fit`). Before the adapter trains, every item's head is warmed
up alone on frozen pooled pair features (``config.head_warmup_epochs`` at ``head_warmup_lr``, as per-item LoRA does,
:func:`warm_up_heads`), so the joint training starts from useful heads instead of random ones. Early stopping and
model selection use *pooled* validation: the mean validation QWK over items weighted by their validation rows (items
whose QWK is undefined left out), so an item with 2-3 validation rows does not decide the epoch alone. An item too
small to split keeps all its rows for training and is named in a warning.

With ``TrainOptions.cv_folds >= 2`` and at least one small item (its own validation split below ``min_val_rows``
responses, or one class: :func:`~scoreplex.data.splits.validation_shortfall`), the pooled validation split is itself
a few rows per item, and early stopping on it picks the first epoch or two by chance. The joint model's number of
epochs is then chosen by k-fold cross-validation over every item at once (:func:`choose_cross_item_epochs`: each
fold holds out a fifth of every item, the pooled validation QWK per epoch is averaged over the folds) and the model
is refitted on all responses, replaying the folds' run up to that epoch (their learning-rate schedule over all
``config.epochs``; the head warm-up runs all its epochs in the folds and the refit alike, nothing chosen on a
held-out fold but the epoch count); each item's validation metrics and decoding then come from its
out-of-fold probabilities at the chosen epoch (an item with a single response has none: it is in every fold's
training rows, and keeps argmax).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from scoreplex.backbone import Backbone, lora_target_modules
from scoreplex.crossitem.method import SHARED_NAME, CrossItemMethod
from scoreplex.crossitem.model import CROSS_ITEM_HEADS, CrossItemModel, pairing_text
from scoreplex.data.dataset import TaskData
from scoreplex.decoding import RouteOptions
from scoreplex.encoding import Encoded, choose_max_length, collate, encode_pairs, train_batches
from scoreplex.errors import ConfigError, DataError, SuiteError
from scoreplex.heads import probabilities, rubric_loss
from scoreplex.methods.base import TaskModel, build_head, load_strict, split_state
from scoreplex.methods.per_task import LoRA
from scoreplex.metrics import evaluate_task
from scoreplex.predictions import decode, embed_all, predict_logits
from scoreplex.progress import progress_log
from scoreplex.suite import Suite
from scoreplex.tasks import TaskSpec
from scoreplex.training.loop import FitResult, TrainConfig, checkpoint_epochs, fit
from scoreplex.training.suite import TaskResult, TrainOptions, _features_batches, _load_oof, _save_oof, finish_task

CHECKPOINT = "cross-item"
"""Name of the training checkpoint under ``<suite>/.checkpoints/`` until the suite is written."""


@dataclass(frozen=True)
class CrossItemSettings:
    """The cross-item method's own settings, given as ``MethodSettings.extra`` (``TrainOptions.settings.extra``)."""

    with_rubric: bool = False
    """Append each item's rubric text to its question in the pairing text (long rubrics cost response tokens)."""
    question_share: float = 0.25
    """Share of the token budget the item text keeps when a pair does not fit (the response keeps the rest)."""
    head: str = "per-item"
    """``"per-item"``: a softmax head per item; ``"shared-ordinal"``: one latent score shared by all items and per
    item an ordinal link (thresholds, scale) on it (:class:`~scoreplex.heads.OrdinalHead`), so an item with few or
    no scored answers borrows the others' scale (:func:`add_item` then fits only its thresholds)."""

    def __post_init__(self) -> None:
        if self.head not in CROSS_ITEM_HEADS:
            raise ConfigError(f"head={self.head!r}; give one of {sorted(CROSS_ITEM_HEADS)}.")
        if not 0 < self.question_share < 1:
            raise ConfigError(
                f"question_share={self.question_share!r}; give a share of the token budget in (0, 1), e.g. 0.25."
            )

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> CrossItemSettings:
        """The settings in ``extra``; ConfigError naming an unknown key and the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ConfigError(f"unknown cross-item settings {unknown}; the known ones are {sorted(known)}.")
        return cls(**dict(extra))


def _split(
    datasets: Mapping[str, TaskData], val_sets: Mapping[str, TaskData] | None, options: TrainOptions
) -> tuple[dict[str, TaskData], dict[str, TaskData], list[str]]:
    """Per item ``(train, val)``: ``val_sets`` where given, else a seeded stratified split; items too small to split
    train on all their rows (returned third, for the warning)."""
    from scoreplex.data.splits import train_val_split

    train, val, unsplit = {}, {}, []
    for task_id, data in datasets.items():
        if not data.has_labels:
            raise DataError("training needs scored responses (labels).", task=task_id, file=data.source or None)
        if val_sets is not None and task_id in val_sets:
            train[task_id], val[task_id] = data, val_sets[task_id]
            continue
        try:
            train[task_id], val[task_id] = train_val_split(
                data, val_fraction=options.val_fraction, seed=options.config.seed
            )
        except DataError:
            train[task_id] = data
            unsplit.append(task_id)
    if not val:
        raise ConfigError(
            f"no item has enough responses for a validation split ({len(datasets)} items); pass val_sets= or give "
            "the items more scored responses."
        )
    return train, val, unsplit


def defined_qwk(metrics: Mapping[str, Any]) -> float | None:
    """The ``qwk`` of :func:`~scoreplex.metrics.evaluate_task`'s metrics, None where it is undefined (None or NaN)."""
    qwk = metrics.get("qwk")
    return None if qwk is None or not np.isfinite(float(qwk)) else float(qwk)


def pooled_qwk(val: Mapping[str, TaskData], logits_of: Callable[[str], torch.Tensor]) -> float:
    """Validation QWK pooled over items: the mean of each item's QWK weighted by its validation rows, items whose
    QWK is undefined (one class in truth and prediction) left out; 0 when none is defined. ``logits_of(task)``:
    that item's validation logits ``(n, sum K)``."""
    scores, weights = [], []
    for task_id, data in val.items():
        pred = decode(data.spec, data.ids, logits_of(task_id))
        qwk = defined_qwk(evaluate_task(data.spec, data.labels, pred.labels))
        if qwk is not None:
            scores.append(qwk)
            weights.append(len(data))
    return float(np.average(scores, weights=weights)) if scores else 0.0


def cross_item_objective(model: CrossItemModel | _Heads, batch: dict) -> torch.Tensor:
    """Loss of one mixed batch: each item's rows through its own head, weighted by their share of the batch. The
    batch holds tokens, or pooled ``features`` (the head warm-up)."""
    if "features" in batch:
        pooled = batch["features"]  # (B, H)
    else:
        pooled = model.embed(batch["input_ids"], batch["attention_mask"])  # (B, H)
    tasks = batch["tasks"]
    n_tokens = batch.get("n_tokens")  # (B,): each response's token count, for heads with the length feature
    total = pooled.new_zeros(())
    for task_id in dict.fromkeys(tasks):
        rows = torch.as_tensor([i for i, t in enumerate(tasks) if t == task_id])
        counts = model.specs[task_id].class_counts
        logits = model.heads[task_id](pooled[rows], None if n_tokens is None else n_tokens[rows])  # (b, sum K)
        total = total + rubric_loss(logits, batch["labels"][rows][:, : len(counts)], counts) * (len(rows) / len(tasks))
    return total


def _stacked_labels(encs: Mapping[str, Encoded]) -> np.ndarray:
    """Every item's labels one under the other ``(N, D_max)``, padded with -1 to the widest rubric."""
    width = max(e.labels.shape[1] for e in encs.values())
    labels = np.full((sum(len(e) for e in encs.values()), width), -1, dtype=np.int64)
    start = 0
    for e in encs.values():
        labels[start : start + len(e), : e.labels.shape[1]] = e.labels
        start += len(e)
    return labels


def _stacked_tokens(encs: Mapping[str, Encoded]) -> np.ndarray | None:
    """Every item's response token counts one after the other ``(N,)``; None if an item does not record them."""
    if any(e.n_tokens is None for e in encs.values()):
        return None
    return np.concatenate([e.n_tokens for e in encs.values()])


def _mixed_batches(encs: Mapping[str, Encoded], batch_size: int):
    """``make_batches(rng)`` over every item's rows, labels padded with -1 to the widest rubric."""
    task_ids = list(encs)
    ids = [x for e in encs.values() for x in e.input_ids]
    owner = np.concatenate([np.full(len(e), k) for k, e in enumerate(encs.values())])
    labels = _stacked_labels(encs)
    pad_id = next(iter(encs.values())).pad_id
    n_tokens = _stacked_tokens(encs)
    mixed = Encoded(ids, labels, pad_id, n_tokens=n_tokens)
    lengths = mixed.lengths

    def make(rng: np.random.Generator):
        for idx in train_batches(lengths, batch_size, rng):
            batch = collate(mixed, idx)
            batch["tasks"] = [task_ids[owner[i]] for i in idx]
            yield batch

    return make, (len(ids) + batch_size - 1) // batch_size


def _pick_max_length(bb: Backbone, train: Mapping[str, TaskData], texts: Mapping[str, str], share: float) -> int:
    """Max length covering 99% of the training pairs (whole question + response)."""
    lengths = np.concatenate(
        [
            encode_pairs(bb.tokenizer, texts[task_id], data.texts, bb.max_positions, first_share=share).lengths
            for task_id, data in train.items()
        ]
    )
    return min(choose_max_length(lengths), bb.max_positions)


class _Heads(nn.Module):
    """A cross-item model's heads alone (and its specs): what the head warm-up trains."""

    fresh_prefixes = ("heads.",)

    def __init__(self, model: CrossItemModel) -> None:
        super().__init__()
        self.heads = model.heads
        self.specs = model.specs


def warm_up_heads(
    model: CrossItemModel,
    enc_train: Mapping[str, Encoded],
    val: Mapping[str, TaskData],
    enc_val: Mapping[str, Encoded],
    config: TrainConfig,
    *,
    progress: bool = True,
) -> FitResult:
    """Fit every item's head (and the shared latent of ``shared-ordinal``) on frozen pooled pair features, mixed
    batches over all items, ``config.head_warmup_epochs`` epochs at ``config.head_warmup_lr`` (best epoch by pooled
    validation QWK kept); the encoder and its adapter are not touched ("linear probing, then fine-tuning", Kumar et
    al. 2022; per-item LoRA does the same, :func:`~scoreplex.training.suite.train_task`). One encoder pass per row."""
    f_train = [embed_all(model.task_view(t), e) for t, e in enc_train.items()]  # [(n_t, H)]
    f_val = {t: embed_all(model.task_view(t), e) for t, e in enc_val.items()}
    tasks = [t for t, e in enc_train.items() for _ in range(len(e))]
    n_train = _stacked_tokens(enc_train)
    n_val = {t: None if e.n_tokens is None else torch.as_tensor(e.n_tokens) for t, e in enc_val.items()}
    make_batches = _features_batches(
        torch.cat(f_train), _stacked_labels(enc_train), config.batch_size, n_train, tasks=tasks
    )
    warm = replace(config, epochs=config.head_warmup_epochs, lr=config.head_warmup_lr, head_lr=None, patience=0)
    return fit(
        _Heads(model),
        make_batches,
        (len(tasks) + config.batch_size - 1) // config.batch_size,
        cross_item_objective,
        (lambda m: pooled_qwk(val, lambda t: m.heads[t](f_val[t], n_val[t]))) if val else None,  # refit: all epochs
        warm,
        description="cross-item head warm-up",
        progress=progress,
        score_name="pooled validation QWK",
    )


def _task_config(model: CrossItemModel, text: str, settings: CrossItemSettings) -> dict[str, Any]:
    pc = model.encoder.peft_config["default"]
    return {
        **model.head_config,
        "lora_r": pc.r,
        "lora_alpha": pc.lora_alpha,
        "lora_dropout": pc.lora_dropout,
        "lora_targets": sorted(pc.target_modules),
        "pairing_text": text,
        "question_share": settings.question_share,
    }


@dataclass
class CrossItemRun:
    """A trained cross-item model with what writing its suite needs (:func:`fit_cross_item`)."""

    model: CrossItemModel
    result: FitResult
    train: dict[str, TaskData]
    val: dict[str, TaskData]
    """Validation rows of the items that have them (items too small to split are missing)."""
    texts: dict[str, str]
    """Each item's pairing text."""
    max_length: int
    truncated_share: float | None
    """Share of training responses cut at ``max_length`` when it was picked from the data (None when given)."""
    unsplit: list[str]
    """Items too small for a validation split (trained on all their rows)."""
    settings: CrossItemSettings
    encodings: dict[str, Encoded]
    """Validation encodings per item."""
    truncated: dict[str, int]
    """Training responses cut per item."""
    cv: dict[str, Any] | None = None
    """How the epochs were chosen by cross-validation (:func:`choose_cross_item_epochs`), None without it."""
    out_of_fold: dict[str, list[np.ndarray]] | None = None
    """With cross-validation: per item, every response's out-of-fold class probabilities at the chosen epoch
    (``[(n_item, K_d)]``); the refitted items' validation metrics and decoding come from them."""


def fit_cross_item(
    datasets: Mapping[str, TaskData],
    options: TrainOptions,
    bb: Backbone,
    *,
    val_sets: Mapping[str, TaskData] | None = None,
    pairing_texts: Mapping[str, str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    refit_epochs: int | None = None,
    on_val_logits: Callable[[dict[str, torch.Tensor]], None] | None = None,
    select_warm_up: bool = True,
) -> CrossItemRun:
    """Train the cross-item model on every item of ``datasets`` (see :func:`train_cross_item`); writes nothing but
    the loop's checkpoint. ``refit_epochs``: train on all responses, without validation, for the first
    ``refit_epochs`` epochs of the ``options.config.epochs`` schedule (the count chosen by
    :func:`choose_cross_item_epochs`, whose folds ran that schedule; the head warm-up runs all its epochs).
    ``on_val_logits``: called after each epoch's validation with ``{item: (n_val, sum K) logits}``.
    ``select_warm_up=False``: the head warm-up runs all its epochs instead of keeping its best on validation (a
    cross-validation fold, so that it is trained as the refit will be)."""
    if not datasets:
        raise ConfigError("no items to train: the data held no responses.")
    settings = CrossItemSettings.from_extra(options.settings.extra)
    log = progress_log(options.progress)
    refit = refit_epochs is not None
    if refit:
        train, val, unsplit = dict(datasets), {}, []
    else:
        train, val, unsplit = _split(datasets, val_sets, options)
    if unsplit and log is not None:
        log(
            f"warning: {len(unsplit)} items have too few responses for a validation split and train on all their "
            f"rows (validation pools the other items): {', '.join(unsplit[:20])}"
            + (" ..." if len(unsplit) > 20 else "")
        )
    texts = {
        t: (pairing_texts or {}).get(t) or pairing_text(d.spec, with_rubric=settings.with_rubric)
        for t, d in datasets.items()
    }
    share = settings.question_share
    if options.max_length is not None:
        if options.max_length > bb.max_positions:
            raise ConfigError(
                f"max_length={options.max_length} is beyond the backbone's {bb.max_positions} positions; give "
                f"--max-length {bb.max_positions} or less."
            )
        max_length = options.max_length
    else:
        max_length = _pick_max_length(bb, train, texts, share)

    torch.manual_seed(options.config.seed)
    s = options.settings
    encoder = LoRA.wrap(
        bb.encoder, s.lora_r, s.lora_alpha, s.lora_dropout, lora_target_modules(bb.encoder, s.lora_targets)
    )
    model = CrossItemModel(
        encoder,
        bb.hidden,
        [d.spec for d in datasets.values()],
        options.pooling,
        head_hidden=s.head_hidden,
        head_dropout=s.head_dropout,
        head=settings.head,
        length_feature=s.length_feature,
    )
    enc_train = {
        t: encode_pairs(bb.tokenizer, texts[t], d.texts, max_length, d.labels, first_share=share)
        for t, d in train.items()
    }
    enc_val = {t: encode_pairs(bb.tokenizer, texts[t], d.texts, max_length, first_share=share) for t, d in val.items()}
    cut = sum(e.truncated for e in enc_train.values())
    # the share of training responses a picked max_length cuts (a given one is the caller's choice: not recorded)
    truncated = None if options.max_length is not None else cut / max(1, sum(len(e) for e in enc_train.values()))
    if log is not None:
        log(
            f"cross-item: {len(datasets)} items, {sum(len(d) for d in train.values())} training and "
            f"{sum(len(d) for d in val.values())} validation responses, max_length {max_length}"
            + (f"; {cut} training responses cut" if cut else "")
        )
    # a resumed run restores the warmed-up heads from its checkpoint, so the warm-up is not repeated
    resuming = checkpoint_dir is not None and (Path(checkpoint_dir) / "state.json").is_file()
    if options.config.head_warmup_epochs > 0 and not resuming:
        warm_up_heads(
            model,
            enc_train,
            val if select_warm_up else {},
            enc_val if select_warm_up else {},
            options.config,
            progress=options.progress,
        )
    make_batches, steps = _mixed_batches(enc_train, options.config.batch_size)

    def validate(m: CrossItemModel) -> float:
        logits = {t: predict_logits(m.task_view(t), enc_val[t]) for t in val}
        if on_val_logits is not None:
            on_val_logits(logits)
        return pooled_qwk(val, logits.__getitem__)

    result = fit(
        model,
        make_batches,
        steps,
        cross_item_objective,
        validate if val else None,
        replace(options.config, patience=0) if refit else options.config,
        checkpoint_dir=checkpoint_dir,
        description="cross-item refit on all responses" if refit else "cross-item",
        progress=options.progress,
        score_name="pooled validation QWK",
        stop_after=refit_epochs,
        run_key=_run_key(bb, options, max_length, texts, train),
    )
    return CrossItemRun(
        model,
        result,
        train,
        val,
        texts,
        max_length,
        truncated,
        unsplit,
        settings,
        enc_val,
        {t: e.truncated for t, e in enc_train.items()},
    )


def save_cross_item(
    run: CrossItemRun,
    out_dir: str | os.PathLike[str],
    bb: Backbone,
    options: TrainOptions,
    *,
    on_task_done: Callable[[TaskResult], None] | None = None,
) -> Suite:
    """Write a trained run as a suite (reopening an unfinished one of the same settings): the adapter as the shared
    module, then per item its decoding and stacked lexical model (fitted on its validation rows, as
    :func:`~scoreplex.training.suite.train_suite` does) and its module."""
    from peft import get_peft_model_state_dict

    t0 = time.perf_counter()
    model, val = run.model, run.val
    suite = Suite.create(
        out_dir,
        method=CrossItemMethod.name,
        backbone=bb.info.to_dict(),
        pooling=model.pooling,
        max_length=run.max_length,
    )
    extra = {"cross_item": {"items": len(model.specs), "unsplit_items": run.unsplit, "fit": _fit_record(run.result)}}
    if run.cv is not None:
        extra["cross_item"]["cv"] = run.cv
    if run.truncated_share is not None:
        extra["truncated_share"] = run.truncated_share
    suite.update(**extra)
    lora = {f"lora.{k}": v for k, v in get_peft_model_state_dict(model.encoder).items()}
    first = _task_config(model, "", run.settings)
    suite.add_shared(SHARED_NAME, lora, {k: first[k] for k in ("lora_r", "lora_alpha", "lora_targets")})
    for task_id, spec in model.specs.items():
        train = run.train[task_id]
        val_metrics: dict[str, Any] = {}
        decoding = stack = report = None
        if task_id in val:
            with torch.no_grad():
                logits = predict_logits(model.task_view(task_id), run.encodings[task_id])
            val_metrics = evaluate_task(spec, val[task_id].labels, decode(spec, val[task_id].ids, logits).labels)
            if options.decoding or options.lexical:
                probs = [p.numpy().astype(np.float64) for p in probabilities(logits, spec.class_counts)]
                decoding, stack, report = finish_task(
                    train,
                    val[task_id],
                    probs,
                    lexical=options.lexical,
                    decoding=options.decoding,
                    routing=options.routing,
                )
        elif run.out_of_fold is not None and task_id in run.out_of_fold:
            decoding, val_metrics = _out_of_fold_decoding(train, run.out_of_fold[task_id], options)
        out_of_fold = run.out_of_fold is not None and task_id in run.out_of_fold and task_id not in val
        n_val = len(val[task_id]) if task_id in val else len(train) if out_of_fold else 0
        summary: dict[str, Any] = {
            "metrics": {"validation": val_metrics},
            "train": {
                "n_train": len(train),
                "n_val": n_val,
                "validation": "out-of-fold" if out_of_fold else "held out" if task_id in val else "none",
                "truncated": run.truncated[task_id],
                "joint": True,
                "config": options.config.to_dict(),
            },
        }
        tensors = {f"head.{k}": v for k, v in model.heads[task_id].state_dict().items()}
        lexical_record = None
        if stack is not None:
            lexical_tensors, lexical_record = stack.record()
            tensors.update(lexical_tensors)
        if report is not None:
            summary["lexical"] = report
        suite.add_task(
            spec,
            tensors,
            _task_config(model, run.texts[task_id], run.settings),
            summary,
            shared=SHARED_NAME,
            decoding=decoding.to_dict() if decoding is not None else None,
            lexical=lexical_record,
        )
        if on_task_done is not None:  # an item without validation rows reports an undefined QWK
            seconds, val_metrics = time.perf_counter() - t0, val_metrics or {"qwk": float("nan"), "n": 0}
            on_task_done(
                TaskResult(task_id, run.result, val_metrics, len(train), n_val, suite.task_bytes(task_id), seconds)
            )
    return suite


def train_cross_item(
    datasets: Mapping[str, TaskData],
    out_dir: str | os.PathLike[str],
    options: TrainOptions | None = None,
    *,
    val_sets: Mapping[str, TaskData] | None = None,
    backbone: Backbone | None = None,
    pairing_texts: Mapping[str, str] | None = None,
    on_task_done: Callable[[TaskResult], None] | None = None,
) -> Suite:
    """Train one cross-item scorer on every item of ``datasets`` and write it as a suite at ``out_dir``.

    One LoRA adapter (``options.settings``: rank, alpha, targets) on the shared backbone reads each response paired
    with its item's text (``pairing_texts[task]``, else :func:`~scoreplex.crossitem.model.pairing_text` of its spec),
    and each item gets its own head (``CrossItemSettings.head``: a softmax head, or an ordinal link on one latent
    score shared by all items); the heads are first warmed up on frozen features (:func:`warm_up_heads`, when
    ``options.config.head_warmup_epochs`` > 0), then all items train together in mixed batches by the one training loop
    (``options.config``; early stopping on pooled validation QWK, see the module docstring). Validation rows are
    ``val_sets`` where given, else a ``options.val_fraction`` split per item. After training, each item's decoding
    and stacked lexical model are fitted on its validation rows as in :func:`~scoreplex.training.suite.train_suite`
    (items without validation rows get neither). ``options.settings.extra`` takes :class:`CrossItemSettings`.

    Resumable: the loop's epoch checkpoint lives in ``out_dir/.checkpoints/cross-item`` until the suite is written;
    a re-run continues from it. SuiteError if ``out_dir`` already holds a finished suite. ``on_task_done`` is called
    per item as it is written (as by ``train_suite``).
    """
    options = options or TrainOptions(method=CrossItemMethod.name)
    root = Path(out_dir)
    ckpt = root / ".checkpoints" / CHECKPOINT
    if (root / "manifest.json").is_file() and not ckpt.is_dir():
        raise SuiteError(
            f"{root} already holds a suite; write the cross-item suite to a new folder, or add items to it with "
            "scoreplex.crossitem.add_item."
        )
    bb = backbone or Backbone.load(options.backbone)
    small = small_items(datasets, options) if options.cv_folds >= 2 and val_sets is None else {}
    if small:
        log = progress_log(options.progress)
        if log is not None:
            log(
                f"{len(small)} of {len(datasets)} items have too small a validation split "
                f"({', '.join(f'{t}: {why}' for t, why in list(small.items())[:5])}"
                + (" ..." if len(small) > 5 else "")
                + f"); the cross-item model's epochs are chosen by {options.cv_folds}-fold cross-validation over "
                "all items, then it is refitted on all responses."
            )
        cv, oof = choose_cross_item_epochs(
            datasets, options, bb, folds=options.cv_folds, folder=ckpt / "cv", pairing_texts=pairing_texts
        )
        run = fit_cross_item(
            datasets, options, bb, pairing_texts=pairing_texts, checkpoint_dir=ckpt / "refit", refit_epochs=cv["epochs"]
        )
        run.cv = {**cv, "small_items": small}
        run.out_of_fold = oof
    else:
        run = fit_cross_item(datasets, options, bb, val_sets=val_sets, pairing_texts=pairing_texts, checkpoint_dir=ckpt)
    suite = save_cross_item(run, root, bb, options, on_task_done=on_task_done)
    shutil.rmtree(ckpt, ignore_errors=True)
    ckpt_root = root / ".checkpoints"
    if ckpt_root.is_dir() and not any(ckpt_root.iterdir()):
        ckpt_root.rmdir()
    return suite


def _out_of_fold_decoding(data: TaskData, probs: list[np.ndarray], options: TrainOptions) -> tuple[Any, dict[str, Any]]:
    """A cross-validated item's validation metrics (out of fold: the summary's ``train.validation``) and its decoding
    fitted on its out-of-fold probabilities, as per-item LoRA does for a small item
    (:func:`~scoreplex.training.suite.out_of_fold_decoding`). No stacked lexical model: no held-out responses are
    left to weigh it on."""
    from scoreplex.predictions import from_probabilities
    from scoreplex.training.suite import out_of_fold_decoding

    metrics = evaluate_task(data.spec, data.labels, from_probabilities(data.spec, data.ids, probs).labels)
    return out_of_fold_decoding(data, probs, options.decoding, options.routing)[0], metrics


def small_items(datasets: Mapping[str, TaskData], options: TrainOptions) -> dict[str, str]:
    """Items whose own ``val_fraction`` split would be too small to choose epochs on
    (:func:`~scoreplex.data.splits.validation_shortfall` at ``options.min_val_rows``), with why; an item too small to
    split at all counts as small."""
    from scoreplex.data.splits import train_val_split, validation_shortfall

    out = {}
    for task_id, data in datasets.items():
        try:
            _, val = train_val_split(data, val_fraction=options.val_fraction, seed=options.config.seed)
        except DataError:
            out[task_id] = f"{len(data)} responses, too few to split"
            continue
        if (why := validation_shortfall(val, min_rows=options.min_val_rows)) is not None:
            out[task_id] = why
    return out


def choose_cross_item_epochs(
    datasets: Mapping[str, TaskData],
    options: TrainOptions,
    bb: Backbone,
    *,
    folds: int,
    folder: str | os.PathLike[str],
    pairing_texts: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]]:
    """Choose the cross-item model's number of epochs by k-fold cross-validation over all items at once.

    Every item's responses are split into ``min(folds, n_item)`` folds (:func:`~scoreplex.data.splits.kfold_split`,
    seeded by ``options.config.seed``); fold ``i`` holds out fold ``i`` of every item (``i mod k_item`` for an item
    with fewer folds). Per fold the joint model trains for ``options.config.epochs`` epochs without early stopping
    (after a head warm-up that runs all its epochs, as the refit's does) and its pooled validation QWK
    (:func:`pooled_qwk`) is kept after every epoch; the chosen count is the first epoch with the best mean over the
    folds. Resumable: each fold's run is checkpointed under
    ``folder/fold-<i>`` with its held-out class probabilities after every epoch. Returns the record ``{"epochs",
    "folds", "mean_pooled_qwk" (per epoch), "per_fold" (per fold, per epoch)}`` and, per item, every response's
    out-of-fold class probabilities at the chosen epoch (``[(n_item, K_d)]`` in the item's row order).

    An item with a single response cannot be held out: it is in every fold's training rows and gets no out-of-fold
    probabilities.

    Raises:
        ConfigError: ``folds`` below 2.
    """
    from scoreplex.data.splits import kfold_split

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"cv_folds={folds!r}; give a number of folds >= 2, e.g. 5.")
    splits = {
        t: kfold_split(d, folds=min(folds, len(d)), seed=options.config.seed) for t, d in datasets.items() if len(d) > 1
    }
    cfg = replace(options.config, patience=0)  # every epoch of every fold, so the epochs can be compared
    fold_options = replace(options, config=cfg)
    epochs = cfg.epochs
    oof = {  # item -> epoch -> [(n_item, K_d)]
        t: [[np.zeros((len(d), c)) for c in d.spec.class_counts] for _ in range(epochs)]
        for t, d in datasets.items()
        if t in splits
    }
    position = {t: {rid: i for i, rid in enumerate(d.ids)} for t, d in datasets.items()}
    curves: list[list[float]] = []
    for i in range(folds):
        train = {t: splits[t][i % len(splits[t])][0] if t in splits else d for t, d in datasets.items()}
        val = {t: parts[i % len(parts)][1] for t, parts in splits.items()}
        fold_dir = Path(folder) / f"fold-{i + 1}"
        saved = {t: _load_oof(fold_dir / OOF_FOLDER / t) for t in val}  # item -> {epoch: [(n_val, K_d)]}
        done = checkpoint_epochs(fold_dir)
        if any(e not in saved[t] for t in val for e in range(1, done + 1)):  # a checkpoint without them: start over
            shutil.rmtree(fold_dir, ignore_errors=True)
            saved, done = {t: {} for t in val}, 0
        epoch = [done]  # the next validation is epoch done + 1 (a resumed fit continues after `done`)

        def keep(logits, saved=saved, epoch=epoch, fold_dir=fold_dir) -> None:
            epoch[0] += 1
            for t, x in logits.items():  # saved before fit's checkpoint: an interrupted epoch is redone
                saved[t][epoch[0]] = [
                    p.numpy().astype(np.float64) for p in probabilities(x, datasets[t].spec.class_counts)
                ]
                _save_oof(fold_dir / OOF_FOLDER / t, saved[t])

        run = fit_cross_item(
            train,
            fold_options,
            bb,
            val_sets=val,
            pairing_texts=pairing_texts,
            checkpoint_dir=fold_dir,
            on_val_logits=keep,
            select_warm_up=False,
        )
        curves.append([float(h["val"]) for h in run.result.history])
        for t, part in val.items():
            rows = np.array([position[t][r] for r in part.ids], dtype=np.int64)
            for e in range(epochs):
                for d, p in enumerate(saved[t][e + 1]):
                    oof[t][e][d][rows] = p
    mean = np.mean(np.array(curves), axis=0)  # (epochs,)
    best = int(np.argmax(mean))  # the first of equal scores: fewer epochs
    record = {
        "epochs": best + 1,
        "folds": folds,
        "mean_pooled_qwk": [round(float(x), 6) for x in mean],
        "per_fold": [[round(x, 6) for x in c] for c in curves],
    }
    return record, {t: per_epoch[best] for t, per_epoch in oof.items()}


OOF_FOLDER = "oof"
"""In a cross-validation fold's checkpoint folder: one folder per item holding its held-out responses' class
probabilities after each epoch (the per-item format, :data:`~scoreplex.training.suite.OOF_FILE`)."""


def _run_key(
    bb: Backbone, options: TrainOptions, max_length: int, texts: Mapping[str, str], train: Mapping[str, TaskData]
) -> dict[str, Any]:
    """What besides the TrainConfig makes a cross-item checkpoint this run's (:func:`~scoreplex.training.loop.fit`'s
    ``run_key``): the backbone, method settings, max_length, each item's pairing text and training rows (hashed)."""
    from scoreplex.training.suite import digest

    return {
        "backbone": bb.info.sha256,
        "settings": asdict(options.settings),
        "max_length": max_length,
        "pooling": options.pooling,
        "items": {t: {"text": digest([texts[t]]), "rows": digest(d.ids)} for t, d in sorted(train.items())},
    }


def _fit_record(result: FitResult) -> dict[str, Any]:
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "best_pooled_qwk": result.best_score if np.isfinite(result.best_score) else None,  # None: a refit
        "seconds": round(result.seconds, 2),
        "history": result.history,
    }


# -- new items ---------------------------------------------------------------------------------------------------------
def shared_encoder(suite: Suite, bb: Backbone):
    """A copy of ``bb``'s encoder with the suite's cross-item adapter (eval mode, frozen)."""
    from peft import set_peft_model_state_dict

    if not isinstance(suite.method_object, CrossItemMethod):
        raise ConfigError(
            f"{suite.root} is a {suite.method!r} suite, not a cross-item one ({CrossItemMethod.name!r}); train one "
            "with `scoreplex train --method cross-item`."
        )
    meta = suite.manifest.get("shared", {}).get(SHARED_NAME)
    if meta is None:
        raise SuiteError(f"{suite.root} has no {SHARED_NAME!r} shared module; restore the suite or retrain it.")
    enc = LoRA.wrap(bb.encoder, int(meta["lora_r"]), float(meta["lora_alpha"]), 0.0, list(meta["lora_targets"]))
    set_peft_model_state_dict(enc, split_state(suite.shared_tensors(SHARED_NAME), "lora."))
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc.eval()


ADD_ITEM_CONFIG = TrainConfig(epochs=40, lr=2e-3, batch_size=16, patience=5)
"""Training settings of a new item's head on frozen cross-item features (cheap: one encoder pass)."""
ADD_ITEM_THRESHOLDS_CONFIG = TrainConfig(epochs=40, lr=5e-2, batch_size=16, patience=5)
"""Training settings of a new item's ordinal thresholds alone (``shared-ordinal`` suites): a handful of parameters
on one frozen latent score, so a larger rate than a whole head's."""


def add_item(
    suite: Suite | str | os.PathLike[str],
    data: TaskData | TaskSpec,
    *,
    val: TaskData | None = None,
    backbone: Backbone | str | None = None,
    pairing: str | None = None,
    config: TrainConfig | None = None,
    val_fraction: float = 0.2,
    decoding: bool = True,
    routing: RouteOptions | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Add a new item to a cross-item suite, on the frozen cross-item encoder's pooled features of its responses
    paired with its text (``pairing``, else :func:`~scoreplex.crossitem.model.pairing_text`); the shared adapter and
    every other item stay as they are (their files untouched).

    * ``per-item`` suites: the item's fresh softmax head trains (``config``, default :data:`ADD_ITEM_CONFIG`).
    * ``shared-ordinal`` suites: the item's head reads the suite's shared latent score (copied from an existing
      item) and only its ordinal thresholds train (default :data:`ADD_ITEM_THRESHOLDS_CONFIG`). Given a
      :class:`~scoreplex.tasks.TaskSpec` (or data with no rows) instead of scored data, the item joins with ZERO
      scored answers: its thresholds stay evenly spaced over the normalised latent range
      (:class:`~scoreplex.heads.OrdinalHead`), so its responses are scored by the latent the other items trained
      (``"zero_shot": True`` in the summary); add scored answers later by re-adding the item under a new id.

    Validation rows are ``val``, else a ``val_fraction`` split of ``data``; an item too small to split validates on its
    training rows (reported as ``"validated_on": "train"``); with ``decoding``, the item's decoding is fitted on
    validation rows (its routing threshold as ``routing`` says, :class:`~scoreplex.decoding.RouteOptions`). Returns the
    item's summary (metrics, rows, the number of parameters fitted and stored). ConfigError if the item is already in
    the suite; DataError for unscored data, or for no data in a ``per-item`` suite (a fresh softmax head needs scored
    answers).
    """
    from scoreplex.data.splits import train_val_split

    suite = suite if isinstance(suite, Suite) else Suite.open(suite)
    spec = data if isinstance(data, TaskSpec) else data.spec
    if suite.has_task(spec.id):
        raise ConfigError(f"item {spec.id!r} is already in the suite at {suite.root}; give the new item another id.")
    zero_shot = isinstance(data, TaskSpec) or len(data) == 0
    if not zero_shot and not data.has_labels:
        raise DataError("adding an item needs scored responses.", task=spec.id, file=data.source or None)
    any_task = suite.task_ids[0] if suite.task_ids else None
    stored_cfg = suite.task_info(any_task)["config"] if any_task else {}
    head_cfg = {
        k: stored_cfg[k] for k in ("head_type", "head_hidden", "head_dropout", "length_feature") if k in stored_cfg
    }
    bb = backbone if isinstance(backbone, Backbone) else Backbone.for_suite(suite, backbone)
    config = config or (ADD_ITEM_THRESHOLDS_CONFIG if head_cfg.get("head_type") == "ordinal" else ADD_ITEM_CONFIG)
    torch.manual_seed(config.seed)
    head = build_head(bb.hidden, spec, head_cfg)
    latent = getattr(head, "latent", None)
    fitted_names = getattr(head, "threshold_names", None)  # a head on a shared latent fits only these
    if latent is not None:
        if any_task is None:
            raise SuiteError(f"{suite.root} has no item to take the shared latent score from; retrain the suite.")
        load_strict(latent, split_state(suite.module_tensors(any_task), "head.latent."), "shared latent score")
    if zero_shot and fitted_names is None:
        raise DataError(
            "this suite's heads are per-item softmax heads, which need scored responses; give the item scored "
            "answers, or train the suite with the shared-ordinal head (--setting head=shared-ordinal), whose new "
            "items can start with none.",
            task=spec.id,
        )
    for name, p in head.named_parameters():
        p.requires_grad_(fitted_names is None or name in fitted_names)
    n_fitted = sum(p.numel() for p in head.parameters() if p.requires_grad)
    encoder = shared_encoder(suite, bb)
    meta = suite.manifest["shared"][SHARED_NAME]
    text = pairing if pairing is not None else pairing_text(spec)
    share = float(stored_cfg.get("question_share", 0.25))
    metrics: dict[str, Any] = {}
    fitted = None
    added: dict[str, Any] = {"n_train": 0, "n_val": 0, "zero_shot": True, "new_parameters": 0}
    if not zero_shot:
        validated_on = "validation"
        if val is None:
            try:
                data, val = train_val_split(data, val_fraction=val_fraction, seed=config.seed)
            except DataError:
                val, validated_on = data, "train"
        view = TaskModel(encoder, head, suite.pooling)
        enc_train = encode_pairs(bb.tokenizer, text, data.texts, suite.max_length, first_share=share)
        enc_val = encode_pairs(bb.tokenizer, text, val.texts, suite.max_length, first_share=share)
        f_train, f_val = embed_all(view, enc_train), embed_all(view, enc_val)
        n_val = torch.as_tensor(enc_val.n_tokens)  # (n_val,): for a head with the length feature
        make_batches = _features_batches(f_train, data.labels, config.batch_size, enc_train.n_tokens)

        def objective(model, batch):
            logits = model(features=batch["features"], n_tokens=batch.get("n_tokens"))
            return rubric_loss(logits, batch["labels"], spec.class_counts)

        def validate(model) -> float:
            pred = decode(spec, val.ids, model(features=f_val, n_tokens=n_val))
            qwk = defined_qwk(evaluate_task(spec, val.labels, pred.labels))
            return 0.0 if qwk is None else qwk

        steps = (len(data) + config.batch_size - 1) // config.batch_size
        result = fit(
            view, make_batches, steps, objective, validate, config, description=f"add {spec.id}", progress=progress
        )
        with torch.no_grad():
            logits = view(features=f_val, n_tokens=n_val)
        metrics = evaluate_task(spec, val.labels, decode(spec, val.ids, logits).labels)
        if decoding and validated_on == "validation":
            probs = [p.numpy().astype(np.float64) for p in probabilities(logits, spec.class_counts)]
            fitted, _, _ = finish_task(data, val, probs, lexical=False, decoding=True, routing=routing)
        added = {
            "n_train": len(data),
            "n_val": len(val),
            "validated_on": validated_on,
            "zero_shot": False,
            "new_parameters": n_fitted,
            "best_epoch": result.best_epoch,
        }
    config_out = {
        **head_cfg,
        "lora_r": int(meta["lora_r"]),
        "lora_alpha": meta["lora_alpha"],
        "lora_dropout": 0.0,
        "lora_targets": list(meta["lora_targets"]),
        "pairing_text": text,
        "question_share": share,
    }
    added["stored_parameters"] = sum(p.numel() for p in head.parameters())
    summary = {"metrics": {"validation": metrics}, "added": added}
    suite.add_task(
        spec,
        {f"head.{k}": v.detach().contiguous() for k, v in head.state_dict().items()},
        config_out,
        summary,
        shared=SHARED_NAME,
        decoding=fitted.to_dict() if fitted is not None else None,
    )
    return summary
