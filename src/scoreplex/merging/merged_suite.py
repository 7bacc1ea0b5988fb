"""From a suite of task models and a merge plan to a merged suite, and plans evaluated side by side.

A merged suite keeps its source method: a merged full-fine-tune suite stores one encoder per group
(``shared/group-<g>.safetensors``) and per task only its head; a merged LoRA suite one adapter per group. Both load
through :class:`~scoreplex.scorer.SuiteScorer`, the CLI and (LoRA) the inference engine like any other suite (the
method joins each task's group module to its own tensors). Optionally each task's head is re-fitted on the frozen
merged encoder (the authors' notebooks did this; the paper does not say so), selected on the validation split.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoreplex.data.dataset import TaskData
from scoreplex.errors import ConfigError, DataError, SuiteError
from scoreplex.merging.merge import MergeSettings, lora_deltas, merge_lora, merge_state_dicts
from scoreplex.merging.plan import MergePlan
from scoreplex.merging.surgery import SurgerySettings, fit_surgery
from scoreplex.methods import TaskModel, methods_with, split_state
from scoreplex.metrics import evaluate_task, mean_over_tasks
from scoreplex.suite import Suite
from scoreplex.training.loop import TrainConfig

REFIT_CONFIG = TrainConfig(epochs=40, lr=2e-3, patience=5)
"""Head re-fit on frozen merged features: what scoreplex uses for head-only training."""


@dataclass
class MergedGroup:
    """One group's merged encoder part: full encoder tensors, or a LoRA adapter with its config."""

    members: list[str]
    tensors: dict[str, torch.Tensor]
    """Prefixed as in a task module: ``encoder.*`` or ``lora.*``."""
    config: dict[str, Any] = field(default_factory=dict)
    """Config entries a member's task.json needs (LoRA rank / alpha / targets)."""
    info: dict[str, Any] = field(default_factory=dict)


class GroupMerger:
    """Merges groups of one source suite's task models against the suite's pretrained backbone."""

    def __init__(self, scorer, settings: MergeSettings = MergeSettings()) -> None:
        self.scorer = scorer
        self.suite: Suite = scorer.suite
        self.method = self.suite.method_object
        if not self.method.capabilities.mergeable:
            raise SuiteError(
                f"the suite at {self.suite.root} is a {self.suite.method!r} suite; merging needs task encoders "
                f"({' or '.join(methods_with('mergeable'))} suites). A head-only suite already shares one encoder."
            )
        self.settings = settings
        self._base = {k: v.detach().clone() for k, v in scorer.bb.encoder.state_dict().items()}
        self._own_features: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    def merge(self, members: list[str]) -> MergedGroup:
        t0 = time.perf_counter()
        modules = [self.suite.load_module(t) for t in members]
        if not self.method.capabilities.has_adapters:  # task encoders: merge their weights
            states = [split_state(tensors, "encoder.") for _, tensors in modules]
            merged = merge_state_dicts(self._base, states, self.settings)
            group = MergedGroup(members, {f"encoder.{k}": v for k, v in merged.items()})
        else:
            adapters = []
            for info, tensors in modules:
                cfg = info["config"]
                adapters.append((split_state(tensors, "lora."), cfg["lora_alpha"] / cfg["lora_r"]))
            targets = {tuple(info["config"]["lora_targets"]) for info, _ in modules}
            if len(targets) > 1:
                raise SuiteError(
                    f"tasks {members} adapt different modules {sorted(targets)}; they cannot share one adapter."
                )
            state, r, err = merge_lora(adapters, self.settings)
            group = MergedGroup(
                members,
                {f"lora.{k}": v for k, v in state.items()},
                {"lora_r": r, "lora_alpha": r, "lora_targets": list(targets.pop())},
                {"svd_relative_error": err},
            )
        group.info["seconds"] = round(time.perf_counter() - t0, 3)
        return group

    def task_vector(self, task_id: str) -> dict[str, torch.Tensor]:
        """The task's encoder update, float32 by tensor name: ``theta_t - theta_0`` for every floating encoder tensor
        of a full fine-tune; ``scaling * B @ A`` per adapted module of a LoRA adapter (the dense update it adds)."""
        info, tensors = self.suite.load_module(task_id)
        if self.method.capabilities.has_adapters:
            cfg = info["config"]
            return lora_deltas(split_state(tensors, "lora."), cfg["lora_alpha"] / cfg["lora_r"])
        state = split_state(tensors, "encoder.")
        return {
            k: state[k].float() - b.float() for k, b in self._base.items() if torch.is_floating_point(b) and k in state
        }

    def task_model(
        self,
        group: MergedGroup,
        task_id: str,
        head_state: Mapping[str, torch.Tensor] | None = None,
        head_config: Mapping[str, Any] | None = None,
    ):
        """A scoring model of ``task_id`` on its group's merged encoder, with its own head (or ``head_state``, built
        with the extra ``head_config`` entries, e.g. a surgery head's rank)."""
        info, tensors = self.suite.load_module(task_id)
        config = {**info["config"], **group.config, **(head_config or {})}
        state = {**group.tensors, **{k: v for k, v in tensors.items() if k.startswith("head.")}}
        if head_state is not None:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            state.update({f"head.{k}": v for k, v in head_state.items()})
        spec = self.suite.spec(task_id)
        return self.method.load(self.scorer.bb.encoder, self.scorer.bb.hidden, spec, config, state, self.scorer.pooling)

    def _features(self, model, texts) -> torch.Tensor:
        from scoreplex.encoding import encode_texts
        from scoreplex.predictions import embed_all

        enc = encode_texts(
            self.scorer.bb.tokenizer, list(texts), self.scorer.max_length, long_inputs=self.scorer.long_inputs
        )
        return embed_all(model, enc)  # (N, H)

    def surgery_head(
        self, group: MergedGroup, task_id: str, texts, surgery: SurgerySettings | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        """Fit ``task_id``'s representation surgery on its group's merged encoder (Yang et al. 2024, §4).

        ``texts``: unlabelled responses of the task (its training split or a subsample). Returns ``(head state,
        config entries, info)``: the head state holds ``surgery.*`` and ``base.*`` (the task's own head), the config
        ``{"surgery_rank": r}``, the info the L1 distances before / after and seconds. The task's own model's
        features of the same ``texts`` are computed once per task and kept.
        """
        surgery = surgery or SurgerySettings(rank=self.settings.surgery_rank)
        key = (task_id, tuple(texts))
        if key not in self._own_features:
            self._own_features[key] = self._features(self.scorer.model(task_id), texts)
        merged = self._features(self.task_model(group, task_id), texts)
        module, info = fit_surgery(merged, self._own_features[key], surgery)
        _, tensors = self.suite.load_module(task_id)
        head = {f"base.{k}": v for k, v in split_state(tensors, "head.").items()}
        head.update({f"surgery.{k}": v.detach().clone() for k, v in module.state_dict().items()})
        return head, {"surgery_rank": surgery.rank}, info


def check_surgery_rank(settings: MergeSettings, width: int, surgery: SurgerySettings | None = None) -> None:
    """ConfigError, before any work, when a surgery module of the asked rank cannot fit features of size ``width``
    (what the heads read: ``SuiteScorer.feature_width``, 2H for windows pooled mean+max)."""
    if settings.per_task != "surgery":
        return
    rank = surgery.rank if surgery is not None else settings.surgery_rank
    if rank > width:
        raise ConfigError(
            f"surgery rank {rank} is above the heads' feature size {width}; give --surgery-rank {width} or "
            "less (16 is the paper's choice)."
        )


def surgery_texts(data: TaskData, surgery: SurgerySettings) -> list[str]:
    """The responses a task's surgery is fitted on: a seeded subsample of ``surgery.rows`` (by response id)."""
    from scoreplex.merging.features import sample_indices

    return [data.texts[i] for i in sample_indices(list(data.ids), surgery.rows, surgery.seed)]


def refit_head(
    model: TaskModel,
    tokenizer,
    train: TaskData,
    val: TaskData,
    max_length: int,
    config: TrainConfig = REFIT_CONFIG,
    *,
    progress: bool = False,
    long_inputs=None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train a fresh head on the frozen merged encoder's features; returns its state and validation metrics.

    Encodes ``train`` and ``val`` once with ``model``'s encoder as the suite encodes them (``long_inputs``, the
    suite's :class:`~scoreplex.encoding.LongInputs`; None = truncate), then :func:`refit_head_on_features`; the new
    head has the old one's hidden units, dropout, length feature and window pooling."""
    from scoreplex.encoding import TRUNCATE, encode_texts
    from scoreplex.predictions import embed_all

    long_inputs = long_inputs or TRUNCATE
    enc_train = encode_texts(tokenizer, train.texts, max_length, train.labels, long_inputs=long_inputs)
    enc_val = encode_texts(tokenizer, val.texts, max_length, val.labels, long_inputs=long_inputs)
    head_config = {"head_hidden": _head_hidden(model.head), "head_dropout": _head_dropout(model.head)}
    if getattr(model.head, "length", None) is not None:
        head_config["length_feature"] = True
    return refit_head_on_features(
        head_config,
        train,
        embed_all(model, enc_train),
        val,
        embed_all(model, enc_val),
        config,
        n_tokens=(enc_train.n_tokens, enc_val.n_tokens),
        progress=progress,
    )


def refit_head_on_features(
    head_config: Mapping[str, Any],
    train: TaskData,
    f_train: torch.Tensor,
    val: TaskData,
    f_val: torch.Tensor,
    config: TrainConfig = REFIT_CONFIG,
    *,
    n_tokens: tuple[Any, Any] | None = None,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A fresh head trained on pooled features already computed by a frozen (merged) encoder, early-stopped on
    validation QWK (:func:`scoreplex.training.loop.fit`, as head-only training does).

    ``f_train`` ``(N_train, H)`` and ``f_val`` ``(N_val, H)`` are the encoder's pooled features of ``train`` and
    ``val``; ``head_config`` the head's config (head type, hidden units, dropout, length feature); ``n_tokens``
    ``(train (N_train,), val (N_val,))`` token counts, which a head with the length feature needs (ConfigError
    without them). Returns the best-validation head's state and its validation metrics.
    """
    from scoreplex.heads import balanced_class_weights, rubric_loss
    from scoreplex.methods.base import build_head
    from scoreplex.metrics import validation_qwk
    from scoreplex.predictions import decode
    from scoreplex.training.loop import fit
    from scoreplex.training.suite import _features_batches

    if not train.has_labels or not val.has_labels:
        raise DataError("a head re-fit needs scored responses (labels) for train and validation.", task=train.spec.id)
    if head_config.get("length_feature") and n_tokens is None:
        raise ConfigError("a head with the length feature needs the responses' token counts (n_tokens).")
    spec = train.spec
    tok_train, tok_val = n_tokens if n_tokens is not None else (None, None)
    val_tokens = None if tok_val is None else torch.as_tensor(tok_val)
    torch.manual_seed(config.seed)
    # f_train already holds what the head reads (2H for a mean+max suite, refit_head encoding as the suite does):
    # no surgery, no second widening
    cfg = {k: v for k, v in head_config.items() if k not in ("surgery_rank", "window_pool")}
    model = TaskModel(None, build_head(f_train.shape[1], spec, cfg), "mean")
    weights = balanced_class_weights(train.labels, spec.class_counts) if config.class_weighting else None

    def objective(mdl, batch):
        logits = mdl(**{k: v for k, v in batch.items() if k != "labels"})
        return rubric_loss(logits, batch["labels"], spec.class_counts, weights)

    def validate(mdl) -> float:
        return validation_qwk(spec, val.labels, decode(spec, val.ids, mdl(features=f_val, n_tokens=val_tokens)).labels)

    steps = (len(train) + config.batch_size - 1) // config.batch_size
    batches = _features_batches(f_train, train.labels, config.batch_size, tok_train)
    fit(model, batches, steps, objective, validate, config, description=f"head re-fit {spec.id}", progress=progress)
    model.eval()
    with torch.no_grad():
        pred = decode(spec, val.ids, model(features=f_val, n_tokens=val_tokens))
    state = {k: v.detach().clone() for k, v in model.head.state_dict().items()}
    return state, evaluate_task(spec, val.labels, pred.labels)


def _head_hidden(head) -> int:
    linears = [m for m in head.net if isinstance(m, torch.nn.Linear)]
    return linears[0].out_features if len(linears) > 1 else 0


def _head_dropout(head) -> float:
    drops = [m for m in head.net if isinstance(m, torch.nn.Dropout)]
    return float(drops[0].p) if drops else 0.1


def merge_suite(
    scorer,
    plan: MergePlan,
    out_dir: str | os.PathLike[str],
    settings: MergeSettings = MergeSettings(),
    *,
    refit: tuple[Mapping[str, TaskData], Mapping[str, TaskData]] | None = None,
    refit_config: TrainConfig = REFIT_CONFIG,
    unlabelled: Mapping[str, TaskData] | None = None,
    surgery: SurgerySettings | None = None,
    extra_manifest: dict[str, Any] | None = None,
    progress: bool = True,
) -> Suite:
    """Write the merged suite of ``plan`` to ``out_dir``.

    ``refit=(train_sets, val_sets)`` re-fits every head; with ``settings.per_task == "surgery"``, every task of a
    merged group (two or more tasks) gets a representation surgery module fitted on a seeded subsample of its
    ``unlabelled`` responses (their scores are not read; ``surgery`` settings, default rank
    ``settings.surgery_rank``) and keeps its own head behind it.

    Raises:
        ConfigError: ``out_dir`` holds a suite; a task without re-fit data or (surgery) responses; both re-fit and
            surgery asked for.
    """
    from scoreplex.progress import progress_bar

    source: Suite = scorer.suite
    plan.validate(source.task_ids, where=f"plan {plan.name!r}")
    out = Path(out_dir)
    if (out / "manifest.json").is_file():
        raise ConfigError(f"{out} already holds a suite; choose a new folder for the merged suite or delete it.")
    if refit is not None:
        missing = [t for t in source.task_ids if t not in refit[0] or t not in refit[1]]
        if missing:
            raise ConfigError(f"head re-fit needs training and validation responses for every task; missing {missing}.")
    use_surgery = settings.per_task == "surgery"
    if use_surgery:
        if refit is not None:
            raise ConfigError(
                "choose a head re-fit or representation surgery, not both: surgery keeps each task's own head."
            )
        missing = [t for t in source.task_ids if unlabelled is None or t not in unlabelled or not len(unlabelled[t])]
        if missing:
            raise ConfigError(
                f"representation surgery needs responses of every task (unscored is fine); none for {missing}."
            )
        surgery = surgery or SurgerySettings(rank=settings.surgery_rank)
        check_surgery_rank(settings, scorer.feature_width, surgery)
    merger = GroupMerger(scorer, settings)
    m = source.manifest
    suite = Suite.create(
        out,
        method=source.method,
        backbone=m["backbone"],
        pooling=m["pooling"],
        max_length=int(m["max_length"]),
        exist_ok=False,
        long_inputs=m.get("long_inputs"),
    )
    groups_info = []
    with progress_bar(progress) as bar:
        job = bar.add_task(f"merging ({plan.name})", total=len(source.task_ids))
        for g, members in enumerate(plan.groups):
            group = merger.merge(members)
            name = f"group-{g}"
            suite.add_shared(name, group.tensors, {"tasks": members, **group.info})
            groups_info.append({"name": name, "tasks": members, **group.info})
            for task_id in members:
                info, tensors = source.load_module(task_id)
                head = split_state(tensors, "head.")
                summary = {
                    "source": str(source.root),
                    "group": name,
                    "source_metrics": m["tasks"][task_id].get("metrics"),
                }
                config = {**info["config"], **group.config}
                if use_surgery and len(members) > 1:
                    texts = surgery_texts(unlabelled[task_id], surgery)
                    head, extra, summary["surgery"] = merger.surgery_head(group, task_id, texts, surgery)
                    config.update(extra)
                if refit is not None:
                    model = merger.task_model(group, task_id)
                    head, val_metrics = refit_head(
                        model,
                        scorer.bb.tokenizer,
                        refit[0][task_id],
                        refit[1][task_id],
                        int(m["max_length"]),
                        refit_config,
                        long_inputs=scorer.long_inputs,
                    )
                    summary["metrics"] = {"validation": val_metrics}
                    summary["head_refit"] = refit_config.to_dict()
                suite.add_task(
                    source.spec(task_id),
                    {f"head.{k}": v for k, v in head.items()},
                    config,
                    summary,
                    shared=name,
                )
                bar.update(job, advance=1)
    suite.update(
        merge={
            "plan": plan.to_dict(),
            "settings": asdict(settings),
            "source": str(source.root),
            "source_bytes": source.model_bytes,
            "head_refit": refit is not None,
            "surgery": asdict(surgery) if use_surgery else None,
            "groups": groups_info,
            **(extra_manifest or {}),
        }
    )
    return suite


class PlanEvaluator:
    """Evaluates many plans on the same data, merging and scoring each distinct group once (cached by members)."""

    def __init__(
        self,
        scorer,
        eval_sets: Mapping[str, TaskData],
        settings: MergeSettings = MergeSettings(),
        *,
        refit: tuple[Mapping[str, TaskData], Mapping[str, TaskData]] | None = None,
        refit_config: TrainConfig = REFIT_CONFIG,
        unlabelled: Mapping[str, TaskData] | None = None,
        surgery: SurgerySettings | None = None,
    ) -> None:
        self.merger = GroupMerger(scorer, settings)
        self.scorer = scorer
        self.eval_sets = eval_sets
        self.refit = refit
        self.refit_config = refit_config
        self.surgery = surgery or SurgerySettings(rank=settings.surgery_rank)
        if settings.per_task == "surgery":
            check_surgery_rank(settings, scorer.feature_width, self.surgery)
            missing = [t for t in eval_sets if unlabelled is None or t not in unlabelled]
            if missing:
                raise ConfigError(f"representation surgery needs responses of every task; none for {missing}.")
        self.unlabelled = unlabelled
        self._cache: dict[tuple[frozenset, str, bool], np.ndarray] = {}

    def _predict(self, model, task_id: str) -> np.ndarray:
        from scoreplex.encoding import encode_texts
        from scoreplex.predictions import decode, predict_logits

        data = self.eval_sets[task_id]
        enc = encode_texts(
            self.scorer.bb.tokenizer, data.texts, self.scorer.max_length, long_inputs=self.scorer.long_inputs
        )
        return decode(data.spec, data.ids, predict_logits(model, enc)).labels

    def predictions(self, members: list[str], refit: bool = False) -> dict[str, np.ndarray]:
        key = frozenset(members)
        if refit and self.merger.settings.per_task == "surgery":
            raise ConfigError("choose a head re-fit or representation surgery, not both: surgery keeps each own head.")
        todo = [t for t in members if (key, t, refit) not in self._cache]
        if todo:
            if len(members) == 1 and not refit:
                group_model = {t: self.scorer.model(t) for t in todo}  # unmerged
            else:
                group = self.merger.merge(members)
                group_model = {}
                for t in todo:
                    model = self.merger.task_model(group, t)
                    if refit:
                        if self.refit is None:
                            raise ConfigError("refit=True needs the evaluator built with refit=(train_sets, val_sets).")
                        head, _ = refit_head(
                            model,
                            self.scorer.bb.tokenizer,
                            self.refit[0][t],
                            self.refit[1][t],
                            self.scorer.max_length,
                            self.refit_config,
                            long_inputs=self.scorer.long_inputs,
                        )
                        model = self.merger.task_model(group, t, head)
                    elif self.merger.settings.per_task == "surgery":
                        texts = surgery_texts(self.unlabelled[t], self.surgery)
                        head, extra, _ = self.merger.surgery_head(group, t, texts, self.surgery)
                        model = self.merger.task_model(group, t, head, extra)
                    group_model[t] = model
            for t in todo:
                self._cache[(key, t, refit)] = self._predict(group_model[t], t)
        return {t: self._cache[(key, t, refit)] for t in members}

    def evaluate(self, plan: MergePlan, *, refit: bool = False) -> dict[str, Any]:
        """Per-task metrics of ``plan`` on the evaluation data, and their mean QWK."""
        plan.validate(list(self.eval_sets), where=f"plan {plan.name!r}")
        per_task = {}
        for members in plan.groups:
            preds = self.predictions(members, refit)
            for t in members:
                data = self.eval_sets[t]
                per_task[t] = evaluate_task(data.spec, data.labels, preds[t])
        ordered = {t: per_task[t] for t in self.eval_sets}
        return {
            "plan": plan.to_dict(),
            "refit": refit,
            "tasks": ordered,
            "mean_qwk": mean_over_tasks(ordered),  # tasks whose QWK is undefined are left out
        }


def unmerged_plan(task_ids: list[str]) -> MergePlan:
    return MergePlan(name="unmerged", groups=[[t] for t in task_ids], source="no merging")
