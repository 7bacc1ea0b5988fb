"""ONE training loop for every method (full fine-tune, LoRA, head-only; later objectives plug in).

AdamW, linear warm-up then linear decay, gradient clipping, early stopping on a validation score (higher is
better), seeded, progress (a bar on a terminal, one line per epoch on stderr elsewhere), and resumable: after every
epoch the trainable tensors, the optimiser state and the loop's counters are written atomically to a checkpoint
folder; a re-run with the same folder continues after the last finished epoch and gives the same result as an
uninterrupted run (the batch order and dropout of epoch e are seeded by ``seed + e``). The checkpoint records the
run's :class:`TrainConfig` and the caller's ``run_key`` (what else decides the result: method settings, rows); a
re-run with other settings is refused, naming each difference, instead of silently mixing two runs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from scoreplex.errors import ConfigError
from scoreplex.progress import progress_bar, progress_log


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by all methods."""

    epochs: int = 5
    """Maximum number of passes over the training data."""
    lr: float = 5e-5
    """Peak learning rate of AdamW (after warm-up)."""
    batch_size: int = 32
    """Responses per optimisation step."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (not applied to biases and LayerNorm weights)."""
    warmup_ratio: float = 0.1
    """Share of all steps spent warming the learning rate up linearly from 0."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    patience: int = 2
    """Stop after this many epochs without a better validation score (0 disables early stopping)."""
    seed: int = 0
    """Seeds batch order, dropout and head initialisation."""
    class_weighting: bool = False
    """Weight the cross-entropy by inverse class frequency ('balanced')."""
    head_warmup_epochs: int = 0
    """Before training the encoder (full / LoRA), fit the fresh head alone on frozen pooled features for this many
    epochs ("linear probing, then fine-tuning", Kumar et al. 2022): cheap (one encoder pass), and the encoder
    updates then start from a useful head instead of a random one."""
    head_warmup_lr: float = 2e-3
    """Learning rate of the head warm-up."""
    head_lr: float | None = None
    """Learning rate of the freshly initialised head (parameters named ``head.*``); None means ``lr``. A new head
    learns slowly at the small rate that suits a pretrained encoder, so full fine-tuning gives it its own."""

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.lr > 0, "lr", "positive, e.g. 5e-5 for full fine-tuning, 5e-4 for LoRA"),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip", ">= 0 (0 disables clipping)"),
            (self.patience >= 0, "patience", ">= 0 (0 disables early stopping)"),
            (self.head_lr is None or self.head_lr > 0, "head_lr", "positive or None"),
            (self.head_warmup_epochs >= 0, "head_warmup_epochs", ">= 0 (0 disables the warm-up)"),
            (self.head_warmup_lr > 0, "head_warmup_lr", "positive"),
        ]
        for ok, name, want in checks:
            if not ok:
                raise ConfigError(
                    f"TrainConfig.{name}={getattr(self, name)!r} is invalid; it must be {want}. "
                    f"Fix: give {name} such a value."
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: (body | head) x (decay | no decay); ``lr_scale`` carries the head's own learning rate.

    "Head" parameters are those whose names start with one of ``model.fresh_prefixes`` (default ``("head.",)``):
    freshly initialised parts that need a larger rate than a pretrained body."""
    head_scale = (config.head_lr or config.lr) / config.lr
    fresh = tuple(getattr(model, "fresh_prefixes", ("head.",)))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or "norm." in name
        groups.setdefault((name.startswith(fresh), no_decay), []).append(p)
    return [
        {"params": ps, "weight_decay": 0.0 if nd else config.weight_decay, "lr_scale": head_scale if head else 1.0}
        for (head, nd), ps in sorted(groups.items())
    ]


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def _save_checkpoint(folder: Path, model, optimizer, best_state, counters: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_state = optimizer.state_dict()
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            opt_tensors[f"{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    files = {
        "trainable.safetensors": {k: v.contiguous() for k, v in _trainable_state(model).items()},
        "best.safetensors": {k: v.contiguous() for k, v in best_state.items()},
        "optimizer.safetensors": {k: v.contiguous() for k, v in opt_tensors.items()},
    }
    for name, tensors in files.items():
        tmp = folder / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, folder / name)
    tmp = folder / ".state.json.tmp"
    tmp.write_text(json.dumps(counters, indent=1), encoding="utf-8")
    os.replace(tmp, folder / "state.json")  # written last: its presence means the checkpoint is whole


def checkpoint_epochs(folder: str | os.PathLike[str]) -> int:
    """How many epochs the checkpoint in ``folder`` holds: a re-run of :func:`fit` continues after them (0: none,
    or no whole checkpoint yet, so training starts over)."""
    state = Path(folder) / "state.json"
    if not state.is_file():
        return 0
    try:
        return int(json.loads(state.read_text(encoding="utf-8"))["epoch"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf where two JSON records differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _json_value(o: Any) -> Any:
    """A numpy scalar as its Python value (else its text), for JSON records of settings."""
    return o.item() if hasattr(o, "item") else str(o)


def checkpoint_identity(config: TrainConfig, run_key: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint records of its run (``config`` and ``run_key``, as JSON values), compared on resume."""
    record = {"config": config.to_dict(), "run_key": dict(run_key or {})}
    return json.loads(json.dumps(record, default=_json_value))


def check_checkpoint(
    folder: str | os.PathLike[str], config: TrainConfig, run_key: Mapping[str, Any] | None = None
) -> None:
    """ConfigError if the checkpoint in ``folder`` was written by a run with another ``config`` or ``run_key``,
    naming each difference (old -> new); nothing without a checkpoint. A caller that skips a finished run without
    calling :func:`fit` checks with this first. A checkpoint written before runs recorded their settings is
    accepted as it is (nothing to compare)."""
    _check_checkpoint(Path(folder), checkpoint_identity(config, run_key))


def _check_checkpoint(folder: Path, identity: dict[str, Any]) -> None:
    state = folder / "state.json"
    if not state.is_file():
        return
    try:
        counters = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # not a whole checkpoint: _load_checkpoint's business
    if "config" not in counters:
        return
    diff = _differences({k: counters.get(k) for k in identity}, identity)
    if diff:
        raise ConfigError(
            f"{folder} holds a checkpoint of a run with other settings ({'; '.join(diff[:8])}"
            + (f"; {len(diff) - 8} more" if len(diff) > 8 else "")
            + "). Fix: rerun with the settings it was started with to resume it, or delete that folder to start over."
        )


def _load_checkpoint(folder: Path, model, optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file():
        return None
    counters = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    _load_trainable(model, load_file(str(folder / "trainable.safetensors")))
    best = load_file(str(folder / "best.safetensors"))
    opt_flat = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in opt_flat.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)
    return best, counters


def fit(
    model: nn.Module,
    make_batches: Callable[[np.random.Generator], Iterable[dict[str, torch.Tensor]]],
    steps_per_epoch: int,
    objective: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    validate: Callable[[nn.Module], float] | None,
    config: TrainConfig,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    description: str = "training",
    progress: bool = True,
    score_name: str = "validation QWK",
    stop_after: int | None = None,
    run_key: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``model``'s parameters that require grad; restore the best validation state at the end.

    ``make_batches(rng)`` yields one epoch of batches; ``objective(model, batch)`` returns the scalar loss (task
    loss, distillation, load balance: the objective is what varies between methods, never the loop);
    ``validate(model)`` returns the validation score to maximise (e.g. mean QWK), named ``score_name`` in the log.
    ``validate=None`` trains all ``config.epochs`` epochs (or ``stop_after``) without validation or early stopping
    and keeps the last state (a refit on all responses whose epoch count was chosen elsewhere, e.g. by
    cross-validation); the history's ``val`` is then None and ``best_score`` nan.

    ``stop_after``: run only the first ``stop_after`` epochs of the ``config.epochs`` schedule (warm-up and linear
    decay over ``config.epochs``). A refit on all responses after cross-validation uses it to replay the folds'
    schedule up to the chosen epoch, so the model it keeps was trained exactly as the epoch that was chosen.

    ``run_key``: JSON-able facts besides ``config`` that make a checkpoint this run's (method settings, max_length,
    the training rows' ids); stored with the checkpoint.

    ``progress``: a bar on a terminal; elsewhere (``nohup``, CI, a pipe) one line per epoch on stderr with the loss,
    the validation score and the time, so a long run is never silent.

    Raises:
        ConfigError: ``stop_after`` outside ``1..config.epochs``; or ``checkpoint_dir`` holds a checkpoint of a run
            with another ``config`` or ``run_key`` (each difference named, old -> new; rerun with the old settings
            to resume, or delete the folder to start over).
    """
    if stop_after is not None and not 1 <= stop_after <= config.epochs:
        raise ConfigError(f"stop_after={stop_after!r} is outside 1..{config.epochs} (the schedule's epochs).")
    last_epoch = config.epochs if stop_after is None else stop_after
    identity = checkpoint_identity(config, run_key)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr)
    total = max(1, steps_per_epoch * config.epochs)
    warm = int(config.warmup_ratio * total)

    def lr_at(step: int) -> float:
        if step < warm:
            return config.lr * (step + 1) / warm
        return config.lr * max(0.0, (total - step) / max(1, total - warm))

    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    start_epoch, step, best_score, best_epoch, bad, history = 0, 0, -math.inf, -1, 0, []
    best_state = _trainable_state(model)
    if ckpt is not None:
        _check_checkpoint(ckpt, identity)
        loaded = _load_checkpoint(ckpt, model, optimizer)
        if loaded is not None:
            best_state, c = loaded
            start_epoch, step, best_score = c["epoch"] + 1, c["step"], c["best_score"]
            best_epoch, bad, history = c["best_epoch"], c["bad_epochs"], c["history"]
            if c.get("stopped"):
                start_epoch = last_epoch
            elif start_epoch > last_epoch:  # the kept model would have trained past stop_after
                raise ConfigError(
                    f"{ckpt} holds a checkpoint after epoch {start_epoch}, past stop_after={last_epoch}. Fix: delete "
                    "that folder to start over, or resume without stop_after."
                )
    t0 = time.perf_counter()
    seconds_before = sum(h.get("seconds", 0.0) for h in history)
    log = progress_log(progress)
    bar = progress_bar(progress and log is None, transient=True)
    if log is not None and start_epoch > 0:
        done = "finished" if start_epoch >= last_epoch else f"continuing with epoch {start_epoch + 1}"
        log(f"{description}: resumed from the checkpoint after epoch {start_epoch}; {done}")
    with bar:
        task = bar.add_task(description, total=steps_per_epoch * last_epoch, completed=step)
        for epoch in range(start_epoch, last_epoch):
            te = time.perf_counter()
            torch.manual_seed(config.seed + epoch)
            rng = np.random.default_rng(config.seed + epoch)
            model.train()
            losses = []
            for batch in make_batches(rng):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step) * group["lr_scale"]
                loss = objective(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
                optimizer.step()
                step += 1
                losses.append(float(loss.detach()))
                bar.update(task, advance=1, description=f"{description} e{epoch + 1} loss {np.mean(losses):.3f}")
            model.eval()
            if validate is None:  # no validation: every epoch is the one kept
                score, improved = None, True
            else:
                with torch.no_grad():
                    score = float(validate(model))
                improved = score > best_score
            if improved:
                best_score, best_epoch, bad = (-math.inf if score is None else score), epoch, 0
                best_state = _trainable_state(model)
            else:
                bad += 1
            history.append(
                {
                    "epoch": epoch + 1,
                    "loss": float(np.mean(losses)) if losses else 0.0,
                    "val": score,
                    "seconds": time.perf_counter() - te,
                }
            )
            stopped = config.patience > 0 and bad >= config.patience
            if log is not None:
                if score is None:
                    shown = "not validated"
                elif improved:
                    shown = f"{score_name} {score:.4f} (best)"
                else:
                    shown = f"{score_name} {score:.4f} (best {best_score:.4f} at epoch {best_epoch + 1})"
                log(
                    f"{description}: epoch {epoch + 1}/{last_epoch}, loss {history[-1]['loss']:.4f}, {shown}, "
                    f"{history[-1]['seconds']:.1f} s (elapsed {time.perf_counter() - t0:.0f} s)"
                    + (f"; stopping: no better score for {bad} epochs" if stopped else "")
                )
            if ckpt is not None:
                counters = {
                    "epoch": epoch,
                    "step": step,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad,
                    "history": history,
                    "stopped": stopped,
                    **identity,
                }
                _save_checkpoint(ckpt, model, optimizer, best_state, counters)
            if stopped:
                break
    _load_trainable(model, best_state)
    model.eval()
    return FitResult(
        best_score=math.nan if validate is None else best_score,
        best_epoch=best_epoch + 1,
        epochs_run=len(history),
        seconds=seconds_before + time.perf_counter() - t0,
        history=history,
    )
