"""Train a suite of tasks, one task at a time, with any method that trains per task (``scoreplex train``)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoreplex.backbone import DEFAULT_BACKBONE, Backbone
from scoreplex.data.dataset import TaskData
from scoreplex.decoding import Decoding, RouteOptions, describe_decoding
from scoreplex.encoding import (
    TRUNCATE,
    Encoded,
    LengthCounts,
    LongInputs,
    choose_max_length,
    collate,
    counts_of_lengths,
    encode_pairs,
    encode_texts,
    token_lengths,
    train_batches,
)
from scoreplex.errors import ConfigError, DataError, ScoreplexError
from scoreplex.heads import balanced_class_weights, rubric_loss
from scoreplex.methods import METHODS, MethodSettings, TaskModel, get_method
from scoreplex.metrics import evaluate_task, validation_qwk
from scoreplex.predictions import decode, embed_all, predict_logits
from scoreplex.progress import progress_log
from scoreplex.stacking import LexicalStack, fit_stack
from scoreplex.suite import Suite
from scoreplex.training.loop import FitResult, TrainConfig, check_checkpoint, checkpoint_epochs, fit

_log = logging.getLogger(__name__)

DEFAULT_LR = {name: m.training_defaults["lr"] for name, m in METHODS.items() if m.capabilities.trains_per_task}
"""Each per-task method's default learning rate (read from its method object)."""


def default_config(method: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig scoreplex recommends for ``method`` (its
    :attr:`~scoreplex.methods.base.Method.training_defaults`, as used in the ASAP-SAS benchmark), with the
    overrides that are not None."""
    base = dict(get_method(method).training_defaults)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


def default_settings(method: str, **overrides: Any) -> MethodSettings:
    """The MethodSettings scoreplex recommends for ``method`` (the field defaults with the method's
    :attr:`~scoreplex.methods.base.Method.settings_defaults`, e.g. LoRA rank 16), with the overrides that are not
    None."""
    base = dict(get_method(method).settings_defaults)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return MethodSettings(**base)


@dataclass
class TrainOptions:
    """Everything `train_suite` needs beyond the data."""

    method: str = "lora"
    backbone: str = DEFAULT_BACKBONE
    pooling: str = "mean"
    max_length: int | None = None
    """Token cap per response; None picks the 99th percentile of the training lengths."""
    val_fraction: float = 0.1
    min_val_rows: int = 20
    """A task whose validation split has fewer responses than this (or one class on a rubric dimension) is a *small
    item*: its validation QWK cannot tell epochs apart (2-3 responses give 0 or 1 by chance). ``train`` warns,
    naming such items, and with ``cv_folds`` chooses their epochs by cross-validation. 0 flags only single-class
    splits. ``--min-val-rows``."""
    cv_folds: int = 0
    """For small items (``min_val_rows``) split by ``val_fraction``: 0 trains them like any task (after the
    warning); ``k >= 2`` chooses their number of epochs by k-fold cross-validation within the item on pooled
    out-of-fold predictions, then refits on all their responses, replaying the folds' schedule up to that epoch
    (:func:`cross_validate_epochs`; about ``k + 1`` times the training time of the item). ``--cv-folds``."""
    config: TrainConfig = field(default_factory=TrainConfig)
    settings: MethodSettings | None = None
    """The method's settings; None takes :func:`default_settings` for ``method``."""
    lexical: bool = True
    """After training, fit a per-task lexical model (word + character n-gram TF-IDF, logistic regression) on the
    training responses and stack it onto the neural head where validation says it helps
    (:mod:`scoreplex.stacking`); a task whose cross-fitted check fails stores nothing."""
    decoding: bool = True
    """After training, fit the task's decoding on its validation split (:func:`scoreplex.decoding.fit_decoding`:
    temperature, ordinal cut points or binary thresholds, and, when the data has a second human score, the routing
    threshold) and store it in the task module. False keeps argmax at temperature 1 with every response automated."""
    routing: RouteOptions = field(default_factory=RouteOptions)
    """How the routing threshold is fitted: the confidence routed on and the rule that picks the threshold
    (``--route-confidence``, ``--route-rule``, ``--route-level``)."""
    progress: bool = True
    """A bar per task on a terminal; elsewhere (``nohup``, CI) plain lines on stderr: each task's start and each
    epoch's loss, validation QWK and time."""
    long_inputs: LongInputs = TRUNCATE
    """How responses longer than ``max_length`` are encoded, in training and by every scorer of the suite
    (stored in the manifest): cut (the default) or overlapping windows whose pooled vectors are averaged, or with
    ``pool="mean+max"`` averaged and maximised side by side (the method settings' ``window_pool`` follows it)."""

    def __post_init__(self) -> None:
        if not isinstance(self.long_inputs, LongInputs):
            raise ConfigError(
                f"long_inputs={self.long_inputs!r}; give a scoreplex.encoding.LongInputs, e.g. LongInputs('windows')."
            )
        if self.settings is None:
            self.settings = default_settings(self.method)
        if self.settings.window_pool != self.long_inputs.window_pool:  # the heads read what the suite pools
            self.settings = replace(self.settings, window_pool=self.long_inputs.window_pool)
        if self.max_length is not None and not 8 <= self.max_length <= 8192:
            raise ConfigError(
                f"max_length={self.max_length!r}; give a token count in 8..8192, or None to pick the 99th "
                "percentile of the training lengths."
            )
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction!r}; give a share of each task in (0, 1), e.g. 0.1.")
        if isinstance(self.min_val_rows, bool) or not isinstance(self.min_val_rows, int) or self.min_val_rows < 0:
            raise ConfigError(
                f"min_val_rows={self.min_val_rows!r}; give a whole number of validation responses >= 0, e.g. 20 "
                "(--min-val-rows)."
            )
        if (
            isinstance(self.cv_folds, bool)
            or not isinstance(self.cv_folds, int)
            or self.cv_folds < 0
            or self.cv_folds == 1
        ):
            raise ConfigError(
                f"cv_folds={self.cv_folds!r}; give 0 (train small items on their own split) or a number of folds "
                ">= 2, e.g. 5 (--cv-folds)."
            )


@dataclass
class TaskResult:
    task_id: str
    fit: FitResult
    """The training loop's result; ``fit.seconds`` counts the epochs only (earlier runs' included)."""
    val_metrics: dict[str, Any]
    n_train: int
    n_val: int
    module_bytes: int
    seconds: float
    """Wall time of the task in this call: tokenising, the feature pass, the head warm-up, every epoch and
    validation, as the manifest's ``train.seconds`` (a resumed task counts only the part run now)."""


@dataclass(frozen=True)
class TrainProgress:
    """Where a :func:`train_suite` run into a folder stands, e.g. after an interruption."""

    finished: list[str]
    """Tasks of the run saved in the suite: a re-run keeps them."""
    remaining: list[str]
    """Tasks not saved yet, in training order."""
    current: str | None
    """The task that was being trained (None: none had started)."""
    checkpoint_epochs: int
    """Finished epochs of ``current`` in its checkpoint: a re-run continues after them (0: it starts over)."""
    checkpoint: Path | None
    """The checkpoint folder of ``current``."""


def checkpoint_dir(out_dir: str | os.PathLike[str], task_id: str) -> Path:
    """Where :func:`train_suite` keeps a task's epoch checkpoint until the task is saved."""
    return Path(out_dir) / ".checkpoints" / task_id


def train_progress(out_dir: str | os.PathLike[str], task_ids: list[str], current: str | None = None) -> TrainProgress:
    """What a re-run of :func:`train_suite` on ``out_dir`` for ``task_ids`` keeps: the tasks saved so far and the
    epochs checkpointed for ``current`` (the task in training when the run stopped)."""
    saved: set[str] = set()
    if (Path(out_dir) / "manifest.json").is_file():
        try:
            saved = set(Suite.open(out_dir, verify=False).task_ids)
        except ScoreplexError:  # an unreadable manifest: report nothing as kept
            pass
    if current in saved:
        current = None  # it was saved just before the interruption
    ckpt = checkpoint_dir(out_dir, current) if current is not None else None
    return TrainProgress(
        finished=[t for t in task_ids if t in saved],
        remaining=[t for t in task_ids if t not in saved],
        current=current,
        checkpoint_epochs=checkpoint_epochs(ckpt) if ckpt is not None else 0,
        checkpoint=ckpt,
    )


def _features_batches(
    features: torch.Tensor,
    labels: np.ndarray,
    batch_size: int,
    n_tokens: np.ndarray | None = None,
    *,
    tasks: Sequence[str] | None = None,
):
    """Shuffled batches of pooled features ``(N, H)`` with labels, each response's token count (for the length
    feature) when ``n_tokens`` is given, and each row's task id (``batch["tasks"]``, for heads of several tasks)
    when ``tasks`` is given."""
    y = torch.as_tensor(labels, dtype=torch.long)
    n = None if n_tokens is None else torch.as_tensor(n_tokens)

    def make(rng: np.random.Generator):
        order = rng.permutation(len(features))
        for i in range(0, len(order), batch_size):
            idx = torch.as_tensor(order[i : i + batch_size])
            batch = {"features": features[idx], "labels": y[idx]}
            if n is not None:
                batch["n_tokens"] = n[idx]
            if tasks is not None:
                batch["tasks"] = [tasks[i] for i in idx.tolist()]
            yield batch

    return make


def _token_batches(enc: Encoded, batch_size: int):
    lengths = enc.lengths

    def make(rng: np.random.Generator):
        for idx in train_batches(lengths, batch_size, rng):
            yield collate(enc, idx)

    return make


def train_task(
    bb: Backbone,
    train: TaskData,
    val: TaskData | None,
    *,
    method: str,
    pooling: str,
    max_length: int,
    config: TrainConfig,
    settings: MethodSettings,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    description: str | None = None,
    on_val_probs: Callable[[list[np.ndarray]], None] | None = None,
    long_inputs: LongInputs = TRUNCATE,
    stop_after: int | None = None,
    select_warm_up: bool = True,
    first_text: str = "",
) -> tuple[TaskModel, FitResult, dict[str, Any] | None]:
    """Train one task's module with ``method``; returns the model (best validation state), the fit, val metrics.

    ``val=None`` trains ``config.epochs`` epochs (or the first ``stop_after`` of that schedule) without validation
    and keeps the last state (the refit of a small item on all its responses, :func:`cross_validate_epochs`); the
    val metrics are then None. ``on_val_probs`` receives the class probabilities ``[(N_val, K_d)]`` of every epoch's
    validation pass (not the head warm-up's). ``select_warm_up=False``: the head warm-up runs all its epochs instead
    of keeping its best on validation (a cross-validation fold, trained as its refit will be).
    ``long_inputs`` in windows mode trains on every window of a long response, pooled per response as
    ``long_inputs.pool`` says (the head's ``settings.window_pool`` follows it).
    ``first_text`` (an experiment of ``benchmarks/recipe.py``; suites do not store it, so their scorers read single
    texts): the item's question or rubric read before every response as a text pair
    (:func:`scoreplex.encoding.encode_pairs`, the question cut to a quarter of ``max_length`` first).

    Raises:
        ConfigError: ``first_text`` with ``long_inputs`` in windows mode.
    """
    spec = train.spec
    if first_text.strip() and long_inputs.windowed:
        raise ConfigError("a first text (question or rubric) pairs with one pass per response; use truncate mode.")
    if settings.window_pool != long_inputs.window_pool:  # the head reads what the windows are pooled into
        settings = replace(settings, window_pool=long_inputs.window_pool)
    if not train.has_labels or (val is not None and not val.has_labels):
        raise DataError("training needs scored responses (labels) for train and validation.", task=spec.id)
    m = get_method(method)
    torch.manual_seed(config.seed)
    model = m.build(bb.encoder, bb.hidden, spec, settings, pooling)
    if first_text.strip():
        enc_train = encode_pairs(bb.tokenizer, first_text, train.texts, max_length, train.labels)
        enc_val = encode_pairs(bb.tokenizer, first_text, val.texts, max_length, val.labels) if val is not None else None
    else:
        enc_train = encode_texts(bb.tokenizer, train.texts, max_length, train.labels, long_inputs=long_inputs)
        enc_val = (
            encode_texts(bb.tokenizer, val.texts, max_length, val.labels, long_inputs=long_inputs)
            if val is not None
            else None
        )
    weights = balanced_class_weights(train.labels, spec.class_counts) if config.class_weighting else None
    warm_description = f"head warm-up {description or spec.id}"
    description = description or f"{method} {spec.id}"

    def objective(mdl, batch):
        logits = mdl(**{k: v for k, v in batch.items() if k != "labels"})
        return rubric_loss(logits, batch["labels"], spec.class_counts, weights)

    def validator(val_logits, hook=None):
        if val is None:
            return None

        def validate(mdl) -> float:
            pred = decode(spec, val.ids, val_logits(mdl))
            if hook is not None:
                hook([np.asarray(p, dtype=np.float64) for p in pred.probs])
            return validation_qwk(spec, val.labels, pred.labels)

        return validate

    steps = (len(train) + config.batch_size - 1) // config.batch_size
    # a resumed run restores the warmed-up head from its checkpoint, so the warm-up is not repeated
    resuming = checkpoint_dir is not None and (Path(checkpoint_dir) / "state.json").is_file()
    uses_features = m.capabilities.uses_features
    if uses_features or (config.head_warmup_epochs > 0 and not resuming):
        # The head on frozen pooled features: the whole of head-only training, or the warm-up before full / LoRA
        # (`probe` shares `model.head`; the base encoder is frozen, so only the head trains).
        probe = TaskModel(bb.encoder, model.head, pooling)
        f_train = embed_all(probe, enc_train)
        f_val = embed_all(probe, enc_val) if enc_val is not None else None
        feature_batches = _features_batches(f_train, train.labels, config.batch_size, enc_train.n_tokens)
        feature_logits = lambda mdl: mdl(features=f_val, n_tokens=torch.as_tensor(enc_val.n_tokens))  # noqa: E731
        if uses_features:
            make_batches, val_logits = feature_batches, feature_logits
        else:
            warm = replace(config, epochs=config.head_warmup_epochs, lr=config.head_warmup_lr, head_lr=None, patience=0)
            fit(
                probe,
                feature_batches,
                steps,
                objective,
                validator(feature_logits) if select_warm_up else None,
                warm,
                description=warm_description,
                progress=progress,
            )
    if not uses_features:
        make_batches = _token_batches(enc_train, config.batch_size)
        val_logits = lambda mdl: predict_logits(mdl, enc_val)  # noqa: E731

    result = fit(
        model,
        make_batches,
        steps,
        objective,
        validator(val_logits, on_val_probs),
        config,
        checkpoint_dir=checkpoint_dir,
        description=description,
        progress=progress,
        stop_after=stop_after,
        run_key=_run_key(bb, method, pooling, max_length, settings, long_inputs, train, first_text),
    )
    if val is None:
        return model, result, None
    with torch.no_grad():
        val_pred = decode(spec, val.ids, val_logits(model))
    return model, result, evaluate_task(spec, val.labels, val_pred.labels)


def digest(values: Sequence[Any]) -> str:
    """A short stable hash of a sequence of values (row ids, a text), for a checkpoint's ``run_key``."""
    import hashlib

    return hashlib.sha256("\x1f".join(map(str, values)).encode("utf-8")).hexdigest()[:16]


def _run_key(
    bb: Backbone,
    method: str,
    pooling: str,
    max_length: int,
    settings: MethodSettings,
    long_inputs: LongInputs,
    train: TaskData,
    first_text: str = "",
) -> dict[str, Any]:
    """What besides the TrainConfig makes a task's checkpoint this run's (:func:`~scoreplex.training.loop.fit`'s
    ``run_key``): backbone, method, pooling, max_length, method settings, long-input mode, the training rows
    (hashed) and a first text read before each response (hashed; absent when there is none, as before)."""
    rows = digest(train.ids)
    settings_record = asdict(settings)
    if settings_record.get("window_pool") == "mean":  # as before the option: older checkpoints still resume
        del settings_record["window_pool"]
    return {
        "backbone": bb.info.sha256,
        "method": method,
        "pooling": pooling,
        "max_length": max_length,
        "settings": settings_record,
        "long_inputs": replace(long_inputs, pool=long_inputs.window_pool).to_dict(),  # truncate: pool unused, "mean"
        "rows": rows,
        **({"first_text": digest([first_text])} if first_text.strip() else {}),
    }


OOF_FILE = "oof.safetensors"
"""In a fold's checkpoint folder: the class probabilities of its held-out responses after each epoch."""


@dataclass(frozen=True)
class EpochChoice:
    """A small item's number of epochs, chosen by k-fold cross-validation within the item
    (:func:`cross_validate_epochs`)."""

    epochs: int
    """The chosen number of epochs: the first with the highest out-of-fold score."""
    folds: int
    """Number of folds."""
    scores: tuple[float, ...]
    """Per epoch ``1..E``: :func:`~scoreplex.metrics.validation_qwk` of every response's out-of-fold argmax."""
    probs: tuple[np.ndarray, ...]
    """Out-of-fold class probabilities ``[(N, K_d)]`` at the chosen epoch, in the item's row order."""

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= len(self.scores):
            raise ConfigError(f"EpochChoice.epochs={self.epochs} is outside 1..{len(self.scores)} (the epochs run).")
        if self.folds < 2:
            raise ConfigError(f"EpochChoice.folds={self.folds}; cross-validation needs at least 2 folds.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for the task's training summary (without the probabilities)."""
        return {"folds": self.folds, "epochs": self.epochs, "out_of_fold_qwk": list(self.scores)}


def _load_oof(folder: Path) -> dict[int, list[np.ndarray]]:
    """``{epoch (1-based): [(n_fold, K_d)]}`` saved in a fold's folder (empty when none)."""
    from safetensors.numpy import load_file

    path = folder / OOF_FILE
    if not path.is_file():
        return {}
    by_epoch: dict[int, dict[int, np.ndarray]] = {}
    for key, arr in load_file(str(path)).items():  # "e<epoch>.d<dimension>"
        e, d = key.split(".")
        by_epoch.setdefault(int(e[1:]), {})[int(d[1:])] = arr
    return {e: [dims[d] for d in sorted(dims)] for e, dims in by_epoch.items()}


def _save_oof(folder: Path, oof: Mapping[int, list[np.ndarray]]) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"e{e}.d{d}": np.ascontiguousarray(p) for e, ps in oof.items() for d, p in enumerate(ps)}
    tmp = folder / f".{OOF_FILE}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / OOF_FILE)


def cross_validate_epochs(
    bb: Backbone,
    data: TaskData,
    *,
    folds: int,
    method: str,
    pooling: str,
    max_length: int,
    config: TrainConfig,
    settings: MethodSettings,
    folder: str | os.PathLike[str],
    progress: bool = True,
    long_inputs: LongInputs = TRUNCATE,
) -> EpochChoice:
    """Choose a small item's number of epochs by k-fold cross-validation within the item.

    The item's responses are split into ``k = min(folds, N)`` folds (:func:`~scoreplex.data.splits.kfold_split`,
    seeded by ``config.seed``). For each fold a model trains on the other folds for ``config.epochs`` epochs
    without early stopping, keeping the class probabilities of its held-out responses after every epoch. Then every
    response has one out-of-fold prediction per epoch, and the chosen count is the first epoch maximising
    :func:`~scoreplex.metrics.validation_qwk` of those predictions pooled over all ``N`` responses (one QWK on
    ``N`` responses instead of k on 2-3 each). The caller refits on all responses with the same schedule, stopped
    after that many epochs (:func:`~scoreplex.training.loop.fit`'s ``stop_after``). A fold's head warm-up runs all
    its epochs without looking at the held-out responses, as the refit's does.

    Resumable: each fold's epochs are checkpointed under ``folder/fold-<i>`` (:func:`~scoreplex.training.loop.fit`)
    with its held-out probabilities (:data:`OOF_FILE`); a finished fold is not trained again.

    Raises:
        DataError: fewer than 2 responses.
    """
    from scoreplex.data.splits import kfold_split
    from scoreplex.predictions import from_probabilities

    spec = data.spec
    k = min(folds, len(data))
    if k < 2:
        raise DataError(
            f"{len(data)} scored response(s) cannot be cross-validated.", task=spec.id, fix="add scored responses."
        )
    cfg = replace(config, patience=0)  # every epoch of every fold, so the epochs can be compared
    position = {rid: i for i, rid in enumerate(data.ids)}
    per_epoch = [[np.zeros((len(data), c)) for c in spec.class_counts] for _ in range(cfg.epochs)]  # E x [(N, K_d)]
    for i, (train, val) in enumerate(kfold_split(data, folds=k, seed=cfg.seed), 1):
        fold_dir = Path(folder) / f"fold-{i}"
        # a fold finished by a run with other settings (lr, epochs, folds, ...) is refused, not reused
        check_checkpoint(fold_dir, cfg, _run_key(bb, method, pooling, max_length, settings, long_inputs, train))
        oof = _load_oof(fold_dir)
        done = checkpoint_epochs(fold_dir)
        if done < cfg.epochs or any(e not in oof for e in range(1, cfg.epochs + 1)):
            epoch = [done]  # the next validation pass is epoch done + 1 (a resumed fit continues after `done`)

            def keep(probs: list[np.ndarray], fold_dir: Path = fold_dir, oof=oof, epoch=epoch) -> None:
                epoch[0] += 1
                oof[epoch[0]] = probs
                _save_oof(fold_dir, oof)  # before fit's checkpoint: an interrupted epoch is redone and rewritten

            train_task(
                bb,
                train,
                val,
                method=method,
                pooling=pooling,
                max_length=max_length,
                config=cfg,
                settings=settings,
                checkpoint_dir=fold_dir,
                progress=progress,
                description=f"{method} {spec.id} fold {i}/{k}",
                on_val_probs=keep,
                long_inputs=long_inputs,
                select_warm_up=False,
            )
        rows = np.array([position[r] for r in val.ids], dtype=np.int64)
        for e in range(cfg.epochs):
            for d, p in enumerate(oof[e + 1]):
                per_epoch[e][d][rows] = p
    scores = [validation_qwk(spec, data.labels, from_probabilities(spec, data.ids, ps).labels) for ps in per_epoch]
    best = int(np.argmax(scores))  # the first of equal scores: fewer epochs
    return EpochChoice(epochs=best + 1, folds=k, scores=tuple(scores), probs=tuple(per_epoch[best]))


def describe_small_items(small: Mapping[str, str], total: int, options: TrainOptions) -> str:
    """The warning ``train`` prints for small items (:attr:`TrainOptions.min_val_rows`): which, why, and what is
    done about it."""
    shown = "; ".join(f"{t}: {why}" for t, why in list(small.items())[:20])
    more = f"; ... and {len(small) - 20} more" if len(small) > 20 else ""
    head = (
        f"{len(small)} of {total} tasks have too small a validation split to choose epochs on "
        f"(min_val_rows={options.min_val_rows}): {shown}{more}. "
    )
    if options.cv_folds >= 2:
        return head + (
            f"Their number of epochs is chosen by {options.cv_folds}-fold cross-validation within each item "
            "(pooled out-of-fold QWK), then each is refitted on all its responses; decoding is fitted on the "
            "out-of-fold predictions and no lexical model is stacked."
        )
    return head + (
        "Their early stopping and decoding rest on these few responses. Fix: --cv-folds 5 (choose their epochs by "
        "cross-validation within the item), a larger --val-fraction, or more scored responses."
    )


MIN_DECODING_ROWS = 20
"""Fewest out-of-fold responses a small item's decoding is fitted on (as :data:`scoreplex.decoding.MIN_AUTOMATED`
and the cut-point fit's minimum); below it the item keeps argmax at temperature 1."""


def human_reference(spec, *datasets: TaskData) -> dict[str, Any] | None:
    """Agreement of the two human raters (:func:`scoreplex.metrics.reference_from_scores`, first score as reference)
    over the double-scored responses of ``datasets``, as the dict a decoding records; None when fewer than 20
    responses have both scores."""
    from scoreplex.metrics import reference_from_scores

    firsts, seconds = [], []
    for d in datasets:
        if d is not None and d.second is not None and d.has_labels:
            rows = np.all(d.second >= 0, axis=1) & np.all(d.labels >= 0, axis=1)
            firsts.append(d.labels[rows])
            seconds.append(d.second[rows])
    if not firsts or sum(len(f) for f in firsts) < 20:
        return None
    ref = reference_from_scores(spec, np.concatenate(firsts), np.concatenate(seconds))
    return None if ref is None else {"qwk": ref.qwk, "exact": ref.exact, "adjacent": ref.adjacent, "n": ref.n}


def describe_stack(report: dict[str, Any]) -> str:
    """One log line on the lexical model's keep/drop decision."""
    if report.get("skipped"):
        return f"lexical model skipped ({report['skipped']})"
    kept = f"kept, weight {report['weight']:g}" if report["kept"] else "dropped"
    return (
        f"lexical model {kept} (validation QWK neural {report['neural_qwk']:.3f}, lexical {report['lexical_qwk']:.3f})"
    )


def val_probabilities(
    bb: Backbone,
    model: TaskModel,
    val: TaskData,
    max_length: int,
    *,
    method: str,
    pooling: str,
    long_inputs: LongInputs = TRUNCATE,
) -> list[np.ndarray]:
    """The trained model's class probabilities ``[(N_val, K_d)]`` on the validation responses."""
    from scoreplex.heads import probabilities

    if get_method(method).capabilities.uses_features:  # a head-only model holds no encoder: the backbone's
        model = TaskModel(bb.encoder, model.head, pooling)
    with torch.no_grad():
        logits = predict_logits(model, encode_texts(bb.tokenizer, val.texts, max_length, long_inputs=long_inputs))
    return [p.numpy().astype(np.float64) for p in probabilities(logits, val.spec.class_counts)]


def finish_task(
    train: TaskData,
    val: TaskData,
    probs: list[np.ndarray],
    *,
    lexical: bool,
    decoding: bool,
    routing: RouteOptions | None = None,
) -> tuple[Decoding | None, LexicalStack | None, dict[str, Any] | None]:
    """After training: the stacked lexical model (fitted on ``train``, kept only if validation says so,
    :func:`scoreplex.stacking.fit_stack`) and the decoding fitted on the validation probabilities ``probs`` (stacked
    when a lexical model is kept; :func:`scoreplex.decoding.fit_decoding`, its routing threshold fitted as ``routing``
    says, :class:`~scoreplex.decoding.RouteOptions`). Returns ``(decoding, stack, stack
    report)``; each is None when not asked for (or, for the stack, not kept)."""
    from scoreplex.decoding import fit_decoding

    stack, report = None, None
    if lexical:
        stack, report = fit_stack(train.spec, train.texts, train.labels, val.texts, val.labels, probs)
        if stack is not None:
            probs = stack.apply(probs, val.texts)
    fitted = None
    if decoding:
        human = human_reference(train.spec, train, val)
        fitted = fit_decoding(val.spec, probs, val.labels, human=human, second=val.second, routing=routing)
    return fitted, stack, report


def pick_max_length(
    bb: Backbone, datasets: Mapping[str, TaskData], lengths: np.ndarray | None = None
) -> tuple[int, float]:
    """Max length covering 99% of all training responses, and the share of responses it truncates
    (``lengths``: their token lengths when already counted, :func:`training_lengths`)."""
    lengths = training_lengths(bb, datasets) if lengths is None else lengths
    max_len = min(choose_max_length(lengths), bb.max_positions)
    return max_len, float((lengths > max_len).mean())


def _task_settings(options: TrainOptions, max_length: int) -> dict[str, Any]:
    """The keyword arguments every per-task training call of :func:`train_suite` shares."""
    return {
        "method": options.method,
        "pooling": options.pooling,
        "max_length": max_length,
        "settings": options.settings,
        "progress": options.progress,
        "long_inputs": options.long_inputs,
    }


def _train_small_item(
    bb: Backbone, data: TaskData, why: str, options: TrainOptions, max_length: int, ckpt: Path
) -> tuple[TaskModel, FitResult, dict[str, Any], dict[str, Any]]:
    """A small item: epochs by :func:`cross_validate_epochs` (folds under ``ckpt/cv``), then the refit on all its
    responses (checkpointed under ``ckpt/refit``). Returns the model, the refit's FitResult (``best_epoch``: the
    chosen count), the out-of-fold metrics at the chosen epoch, and ``{"choice": EpochChoice, "record": JSON}``."""
    from scoreplex.predictions import from_probabilities

    common = _task_settings(options, max_length)
    choice = cross_validate_epochs(
        bb, data, folds=options.cv_folds, config=options.config, folder=ckpt / "cv", **common
    )
    model, result, _ = train_task(
        bb,
        data,
        None,
        config=replace(options.config, patience=0),
        stop_after=choice.epochs,
        checkpoint_dir=ckpt / "refit",
        **common,
        description=f"{options.method} {data.spec.id} refit on all {len(data)} responses",
    )
    oof_pred = from_probabilities(data.spec, data.ids, list(choice.probs))
    val_metrics = evaluate_task(data.spec, data.labels, oof_pred.labels)
    record = {"reason": why, "validation": "out-of-fold", **choice.to_dict()}
    return model, result, val_metrics, {"choice": choice, "record": record}


def _finish_small_item(
    data: TaskData, small_item: dict[str, Any], options: TrainOptions
) -> tuple[Decoding | None, LexicalStack | None, dict[str, Any] | None]:
    """Decoding of a cross-validated small item, fitted on its out-of-fold probabilities at the chosen epoch when
    it has at least :data:`MIN_DECODING_ROWS` responses; no stacked lexical model (no held-out responses are left to
    weigh it on). Records both choices in ``small_item["record"]``."""
    record = small_item["record"]
    stack_report = None
    if options.lexical:
        reason = "small item: no held-out responses left to weigh a lexical model (epochs chosen by cross-validation)"
        stack_report = {"kept": False, "weight": 0.0, "neural_qwk": None, "lexical_qwk": None, "skipped": reason}
    decoding, record["decoding"] = out_of_fold_decoding(
        data, list(small_item["choice"].probs), options.decoding, options.routing
    )
    return decoding, None, stack_report


def out_of_fold_decoding(
    data: TaskData, probs: list[np.ndarray], decoding: bool, routing: RouteOptions | None = None
) -> tuple[Decoding | None, str]:
    """The decoding of a cross-validated item, fitted on its out-of-fold probabilities ``[(N, K_d)]`` at the chosen
    epoch (routing threshold as ``routing`` says), with what was done: only when asked for (``decoding``) and with
    at least :data:`MIN_DECODING_ROWS` responses; else None (argmax at temperature 1)."""
    from scoreplex.decoding import fit_decoding

    if not decoding:
        return None, "not asked for"
    if len(data) < MIN_DECODING_ROWS:
        return None, f"skipped: {len(data)} responses, fewer than {MIN_DECODING_ROWS}; argmax at temperature 1"
    human = human_reference(data.spec, data)
    fitted = fit_decoding(data.spec, probs, data.labels, human=human, second=data.second, routing=routing)
    return fitted, "fitted on the out-of-fold probabilities at the chosen epoch"


def check_same_specs(suite: Suite, datasets: Mapping[str, TaskData]) -> None:
    """Raise ConfigError when a task already in ``suite`` is given with another spec (dimensions, classes or scale,
    :meth:`~scoreplex.tasks.TaskSpec.difference`): re-running ``train`` would keep the old module and score the new
    data on the old scale. The message shows each difference as ``old -> new``."""
    changed = {
        task_id: diff
        for task_id, data in datasets.items()
        if suite.has_task(task_id) and (diff := suite.spec(task_id).difference(data.spec))
    }
    if changed:
        lines = "; ".join(f"task {t}: {', '.join(d)}" for t, d in changed.items())
        raise ConfigError(
            f"the suite at {suite.root} already holds {len(changed)} of these task(s) with another spec (suite -> "
            f"data): {lines}. Train into a new folder (--out), or give the spec the suite was trained with (--tasks; "
            "`scoreplex info` shows it)."
        )


def training_lengths(bb: Backbone, datasets: Mapping[str, TaskData]) -> np.ndarray:
    """Token lengths (special tokens included) of every response of ``datasets``, in task order."""
    return np.concatenate([token_lengths(bb.tokenizer, d.texts) for d in datasets.values()])


def training_truncation(suite: Suite) -> LengthCounts | None:
    """The responses the suite's last training run counted longer than its ``max_length`` (the manifest's
    ``truncation`` record, :func:`train_suite`); None for a suite trained before it was recorded."""
    return LengthCounts.from_dict(suite.manifest.get("truncation"))


@dataclass(frozen=True)
class TaskJob:
    """One task of a :func:`train_suite` run, as :func:`plan_suite` settled it before any training."""

    task_id: str
    data: TaskData
    """All the task's responses."""
    train: TaskData
    """The responses it trains on (a seeded ``val_fraction`` split of ``data``, or all of ``data``)."""
    val: TaskData
    """The responses that choose its epoch and fit its decoding (the split's rest, or the given ``val_sets``)."""
    small_item: str | None = None
    """Why the task is a small item whose epochs are chosen by cross-validation (None: trained on its split)."""
    position: int = 1
    """Its place in the run (1-based), for the log."""
    total: int = 1
    """Tasks the run trains, for the log."""

    def __post_init__(self) -> None:
        if not 1 <= self.position <= self.total:
            raise ConfigError(f"TaskJob.position={self.position} is outside 1..{self.total} (the tasks of the run).")


@dataclass(frozen=True)
class SuitePlan:
    """What :func:`plan_suite` settles before training: the suite folder (created), its ``max_length``, the tasks
    to train. The sequential loop of :func:`train_suite` and the Ray path (:mod:`scoreplex.cluster.train`) both run
    :func:`train_suite_task` on each job."""

    suite: Suite
    max_length: int
    """Token cap of the suite, picked once for every task (the given one, the suite's, or the 99th percentile)."""
    jobs: tuple[TaskJob, ...]
    """The tasks not in the suite yet, in training order."""
    kept: tuple[str, ...]
    """The tasks already in the suite: a re-run keeps them."""


def plan_suite(
    datasets: Mapping[str, TaskData],
    out_dir: str | os.PathLike[str],
    options: TrainOptions,
    bb: Backbone,
    *,
    val_sets: Mapping[str, TaskData] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> SuitePlan:
    """Everything :func:`train_suite` does before training a task: check ``max_length`` against the backbone, pick
    it (once, from every task's lengths) unless given or already in the suite, create or reopen the suite folder
    (recording the truncation counts), check the specs of tasks already there (:func:`check_same_specs`), split
    every task left to train (a task too small to split fails now, before any training) and warn about small items.

    Raises:
        ConfigError: ``max_length`` beyond the backbone, a task given with another spec than the suite's.
        DataError: a task too small to split.
        SuiteError: the folder holds a suite trained with other settings.
    """
    from scoreplex.data.splits import train_val_split, validation_shortfall

    root = Path(out_dir)
    max_length = options.max_length
    if max_length is not None and max_length > bb.max_positions:
        raise ConfigError(
            f"max_length={max_length} is beyond the backbone's {bb.max_positions} positions "
            f"({bb.info.name if bb.info else 'this backbone'}); give --max-length {bb.max_positions} or less."
        )
    truncated = None
    if max_length is None and (root / "manifest.json").is_file():
        max_length = int(Suite.open(root, verify=False).manifest["max_length"])  # adding tasks to a suite
    lengths = training_lengths(bb, datasets)
    if max_length is None:
        max_length, truncated = pick_max_length(bb, datasets, lengths)
    long_inputs = options.long_inputs
    long_inputs.step(max_length)  # a stride longer than a window fails now, before any training
    suite = Suite.create(
        out_dir,
        method=options.method,
        backbone=bb.info.to_dict(),
        pooling=options.pooling,
        max_length=max_length,
        long_inputs=long_inputs.to_dict() if long_inputs.windowed else None,
    )
    counts = counts_of_lengths(lengths, max_length, long_inputs)
    fields: dict[str, Any] = {"truncation": counts.to_dict()}
    if truncated is not None:
        fields["truncated_share"] = truncated
    if any(suite.manifest.get(k) != v for k, v in fields.items()):  # a re-run of a finished suite writes nothing
        suite.update(**fields)
    check_same_specs(suite, datasets)
    log = progress_log(options.progress)
    if log is not None:
        log(counts.describe(max_length, long_inputs))
    todo = [t for t in datasets if not suite.has_task(t)]
    if log is not None and len(todo) < len(datasets):
        log(f"{len(datasets) - len(todo)} of {len(datasets)} tasks already in {root}: kept")
    splits: dict[str, tuple[TaskData, TaskData, bool]] = {}  # task: (train, val, split by val_fraction)
    for task_id in todo:  # every split first: a task too small to split fails before any training
        if val_sets is not None and task_id in val_sets:
            splits[task_id] = (datasets[task_id], val_sets[task_id], False)
        else:
            parts = train_val_split(datasets[task_id], val_fraction=options.val_fraction, seed=options.config.seed)
            splits[task_id] = (*parts, True)
    small = {
        t: why
        for t, (_, val, _) in splits.items()
        if (why := validation_shortfall(val, min_rows=options.min_val_rows)) is not None
    }
    if small:
        (on_warning or _log.warning)(describe_small_items(small, len(datasets), options))
    jobs = tuple(
        TaskJob(
            task_id,
            datasets[task_id],
            train,
            val,
            small.get(task_id) if options.cv_folds >= 2 and was_split else None,
            position,
            len(todo),
        )
        for position, (task_id, (train, val, was_split)) in enumerate(splits.items(), 1)
    )
    return SuitePlan(suite, max_length, jobs, tuple(t for t in datasets if t not in splits))


def train_suite_task(bb: Backbone, suite: Suite, job: TaskJob, options: TrainOptions, max_length: int) -> TaskResult:
    """Train one task of a :func:`plan_suite` plan and write its module into ``suite`` through the suite's locked
    writer (:meth:`~scoreplex.suite.Suite.add_task`, safe for several processes on one filesystem): the model
    (resuming from its epoch checkpoint), then the stacked lexical model and the decoding fitted on validation,
    or, for a cross-validated small item, its epochs by cross-validation and the refit. The checkpoint is removed
    once the module is saved. Returns what ``on_task_done`` receives."""
    method = get_method(options.method)
    root = suite.root
    task_id, data, train, val = job.task_id, job.data, job.train, job.val
    long_inputs = options.long_inputs
    log = progress_log(options.progress)
    ckpt = checkpoint_dir(root, task_id)
    t0 = time.perf_counter()
    if log is not None:
        resumed = checkpoint_epochs(ckpt)
        log(
            f"task {task_id} ({job.position}/{job.total}): "
            + (
                f"{len(data)} responses, epochs chosen by {min(options.cv_folds, len(data))}-fold "
                "cross-validation (small item)"
                if job.small_item is not None
                else f"{len(train)} training, {len(val)} validation responses"
            )
            + (f"; resuming after epoch {resumed}" if resumed else "")
        )
    small_item = None
    if job.small_item is not None:
        model, result, val_metrics, small_item = _train_small_item(bb, data, job.small_item, options, max_length, ckpt)
        train, val = data, data  # counts below: every response trained on, every one validated out of fold
        decoding, stack, stack_report = _finish_small_item(data, small_item, options)
    else:
        model, result, val_metrics = train_task(
            bb, train, val, config=options.config, checkpoint_dir=ckpt, **_task_settings(options, max_length)
        )
        decoding, stack, stack_report = None, None, None
        if options.decoding or options.lexical:
            probs = val_probabilities(
                bb, model, val, max_length, method=options.method, pooling=options.pooling, long_inputs=long_inputs
            )
            decoding, stack, stack_report = finish_task(
                train, val, probs, lexical=options.lexical, decoding=options.decoding, routing=options.routing
            )
    if log is not None and stack_report is not None:
        log(f"task {task_id}: {describe_stack(stack_report)}")
    if log is not None and decoding is not None:
        log(f"task {task_id}: {describe_decoding(decoding)}")
    seconds = time.perf_counter() - t0
    summary = {
        "metrics": {"validation": val_metrics},
        "train": {
            "n_train": len(train),
            "n_val": len(val),
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            # wall time of this task in this call: tokenising, feature pass, head warm-up, every epoch and
            # validation (a resumed task counts only the part run now; fit_seconds adds earlier epochs)
            "seconds": round(seconds, 2),
            "fit_seconds": round(result.seconds, 2),
            "history": result.history,
            "config": options.config.to_dict(),
        },
    }
    tensors, lexical_record = method.module_state(model), None
    if stack is not None:
        lexical_tensors, lexical_record = stack.record()
        tensors = {**tensors, **lexical_tensors}
    if stack_report is not None:
        summary["lexical"] = stack_report
    if small_item is not None:
        summary["small_item"] = small_item["record"]
    suite.add_task(
        train.spec,
        tensors,
        method.module_config(model, options.settings),
        summary,
        decoding=decoding.to_dict() if decoding is not None else None,
        lexical=lexical_record,
    )
    shutil.rmtree(ckpt, ignore_errors=True)
    return TaskResult(task_id, result, val_metrics, len(train), len(val), suite.task_bytes(task_id), seconds)


def remove_empty_checkpoints(out_dir: str | os.PathLike[str]) -> None:
    """Remove ``out_dir/.checkpoints`` once every task's checkpoint in it is gone (all saved)."""
    ckpt_root = Path(out_dir) / ".checkpoints"
    if ckpt_root.is_dir() and not any(ckpt_root.iterdir()):
        ckpt_root.rmdir()


def train_suite(
    datasets: Mapping[str, TaskData],
    out_dir: str | os.PathLike[str],
    options: TrainOptions = TrainOptions(),
    *,
    val_sets: Mapping[str, TaskData] | None = None,
    backbone: Backbone | None = None,
    on_task_done: Callable[[TaskResult], None] | None = None,
    on_task_start: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Suite:
    """Train every task in ``datasets`` into one suite folder; resumes an interrupted run in the same folder.

    Tasks already in the suite are skipped (a ConfigError when the data gives one of them another spec:
    :func:`check_same_specs`); a task interrupted mid-training continues from its last epoch checkpoint
    (kept under ``out_dir/.checkpoints/<task>`` and removed once the task is saved). Validation data is ``val_sets``
    when given, else a seeded stratified ``val_fraction`` split of each task's data. ``on_task_start(task_id)`` is
    called before a task is trained, ``on_task_done`` after it is saved (:func:`train_progress` says where an
    interrupted run stands).

    Small items (a validation split below :attr:`TrainOptions.min_val_rows` responses, or with one class on a
    dimension) are named in one warning before training, passed to ``on_warning`` (default: the ``logging``
    warning of this module). With :attr:`TrainOptions.cv_folds` ``>= 2`` those split by ``val_fraction`` choose
    their epochs by :func:`cross_validate_epochs` and are refitted on all their responses; their summary records
    ``small_item`` (why, the folds, the out-of-fold QWK per epoch, what decoding was fitted on).

    The steps are :func:`plan_suite` then :func:`train_suite_task` per task; :mod:`scoreplex.cluster.train` runs
    the same steps with one Ray task per task.
    """
    if not datasets:
        raise ConfigError("no tasks to train: the data held no responses.")
    method = get_method(options.method)  # fail fast on an unknown name
    if not method.capabilities.trains_per_task:  # one model across tasks, or a ConfigError naming the others
        return method.train_all(
            datasets, out_dir, options, val_sets=val_sets, backbone=backbone, on_task_done=on_task_done
        )
    bb = backbone or Backbone.load(options.backbone)
    plan = plan_suite(datasets, out_dir, options, bb, val_sets=val_sets, on_warning=on_warning)
    for job in plan.jobs:
        if on_task_start is not None:
            on_task_start(job.task_id)
        result = train_suite_task(bb, plan.suite, job, options, plan.max_length)
        if on_task_done is not None:
            on_task_done(result)
    remove_empty_checkpoints(out_dir)
    return plan.suite


def restack_suite(
    suite: Suite,
    train_sets: Mapping[str, TaskData],
    val_sets: Mapping[str, TaskData],
    backbone: Backbone | str | None = None,
    *,
    lexical: bool = True,
    routing: RouteOptions | None = None,
) -> dict[str, dict[str, Any]]:
    """For a suite trained earlier: per task in ``val_sets``, fit the stacked lexical model on its ``train_sets``
    responses (kept only where validation says so) and refit its decoding on the (stacked) validation probabilities
    (routing threshold as ``routing`` says), storing both in the task module — what :func:`train_suite` does after each
    task. ``val_sets`` must be the responses held out from the task's training. Returns per task ``{"lexical": stack
    report or None}``."""
    from scoreplex.scorer import SuiteScorer

    scorer = SuiteScorer(suite, backbone, decoding=False, lexical=False)
    reports: dict[str, dict[str, Any]] = {}
    for task_id, val in val_sets.items():
        probs = scorer.predict(task_id, val.texts, val.ids).probs
        decoding, stack, report = finish_task(
            train_sets[task_id], val, probs, lexical=lexical, decoding=True, routing=routing
        )
        suite.set_lexical(task_id, stack)
        suite.set_decoding(task_id, decoding)
        reports[task_id] = {"lexical": report}
    return reports
