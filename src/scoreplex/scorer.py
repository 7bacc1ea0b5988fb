"""Scoring and evaluating a suite: :class:`SuiteScorer` (any method, one task model at a time),
:func:`open_scorer` (the best scorer for a suite, asked of its method), and :func:`evaluate_suite`.

:class:`SuiteScorer` builds each task's PyTorch model with its method (:meth:`~scoreplex.methods.base.Method.load`)
around the one shared backbone and keeps the most recent ones; it serves every method, including full fine-tunes
(one encoder per task), which cannot share a backbone pass. Suites whose method shares one pass
(``capabilities.shares_backbone_pass``) are better scored by :class:`scoreplex.engine.Engine`, which
:func:`open_scorer` picks for them. Both return :class:`~scoreplex.predictions.Predictions`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scoreplex.backbone import Backbone
from scoreplex.data.dataset import TaskData
from scoreplex.decoding import Decoding, RouteOptions, task_calibration
from scoreplex.encoding import LengthCounts
from scoreplex.errors import ConfigError, DataError, ScoreplexError, UnknownTaskError
from scoreplex.heads import probabilities
from scoreplex.methods import TaskModel
from scoreplex.methods.base import check_window_pool, task_module_error
from scoreplex.metrics import (
    Criteria,
    HumanReference,
    automated_criteria,
    deployment_criteria,
    evaluate_task,
    human_agreement,
    meets_human,
    pooled_metrics,
    reference_from_scores,
    training_reference,
    undefined_tasks,
)
from scoreplex.predictions import MixedScorer, Predictions, from_probabilities, group_by_task, predict_logits
from scoreplex.stacking import LexicalStack
from scoreplex.suite import Suite


class SuiteScorer:
    """Score responses with a suite: one shared backbone, task models built on demand (the ``cache_size`` most
    recently used are kept). Files are read and verified once per process by the :class:`Suite`.

    Args:
        suite: a suite folder or an open :class:`Suite`.
        backbone: a backbone name / folder or a loaded :class:`Backbone`; None takes the suite's
            (:func:`scoreplex.backbone.suite_backbone`). Checked against the manifest's fingerprint.
        cache_size: task models kept in memory.
        decoding: decode by each task module's :class:`~scoreplex.decoding.Decoding` (calibration, cut points,
            routing); False gives the model's own probabilities, argmax and every response automated (for fitting a
            decoding, or comparing with one).
        lexical: stack each task module's lexical model onto the neural probabilities where it has one
            (:mod:`scoreplex.stacking`); False gives the neural head's alone (for fitting the stacking weight).
    """

    def __init__(
        self,
        suite: Suite | str | os.PathLike[str],
        backbone: str | os.PathLike[str] | Backbone | None = None,
        *,
        cache_size: int = 2,
        decoding: bool = True,
        lexical: bool = True,
    ) -> None:
        self.use_decoding = decoding
        self.use_lexical = lexical
        self.suite = suite if isinstance(suite, Suite) else Suite.open(suite)
        self.method = self.suite.method_object
        self.bb = Backbone.for_suite(self.suite, backbone)
        self.max_length = self.suite.max_length
        self.long_inputs = self.suite.long_inputs
        self.pooling = self.suite.pooling
        self.length_counts = LengthCounts()
        """Responses encoded by this scorer so far, and how many were longer than ``max_length`` (cut, or windowed
        in the suite's windows mode); ``scoreplex evaluate`` and ``score`` report it."""
        self._cache: dict[str, TaskModel] = {}
        self._cache_size = cache_size
        self._recent: list[str] = []

    @property
    def feature_width(self) -> int:
        """Width of the pooled features each task's head reads: the backbone's hidden size, twice it for windows
        pooled ``mean+max`` (:meth:`~scoreplex.encoding.LongInputs.feature_width`)."""
        return self.long_inputs.feature_width(self.bb.hidden)

    def model(self, task_id: str) -> TaskModel:
        """The task's scoring model (eval mode), built on first use and kept among the most recent."""
        if task_id in self._cache:
            self._cache[task_id] = self._cache.pop(task_id)  # most recent last
            return self._cache[task_id]
        info = self.suite.task_info(task_id)
        tensors = self.method.task_tensors(self.suite, task_id)
        spec = self.suite.spec(task_id)
        try:
            model = self.method.load(
                self.bb.encoder, self.bb.hidden, spec, info.get("config", {}), tensors, self.pooling
            )
            check_window_pool(model.head, self.long_inputs)
        except (ScoreplexError, KeyError, TypeError, ValueError) as exc:
            raise task_module_error(task_id, exc) from exc
        self._cache[task_id] = model
        while len(self._cache) > self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        return model

    def predict(self, task_id: str, texts: Sequence[str], ids: Sequence[str] | None = None) -> Predictions:
        """Predictions for responses of one task (ids default to ``"0", "1", ...``)."""
        model = self.model(task_id)
        spec = self.suite.spec(task_id)
        if not texts:
            return from_probabilities(spec, [], [np.zeros((0, k)) for k in spec.class_counts])
        enc = self.method.encode(
            self.bb.tokenizer, list(texts), self.max_length, self.suite.task_info(task_id), long_inputs=self.long_inputs
        )
        self.length_counts += enc.counts
        ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
        probs = [p.numpy() for p in probabilities(predict_logits(model, enc), spec.class_counts)]
        stack = self.lexical(task_id)
        if stack is not None:
            probs = stack.apply(probs, list(texts))
        return from_probabilities(spec, ids, probs, self.decoding(task_id))

    def lexical(self, task_id: str) -> LexicalStack | None:
        """The task module's stacked lexical model (None without one, or when made with ``lexical=False``)."""
        if not self.use_lexical:
            return None
        try:
            return self.suite.lexical(task_id)
        except ScoreplexError as exc:
            raise task_module_error(task_id, exc) from exc

    def decoding(self, task_id: str) -> Decoding:
        """The task module's :class:`~scoreplex.decoding.Decoding` (SuiteError naming the task if it is invalid);
        argmax at temperature 1 when this scorer was made with ``decoding=False``."""
        if not self.use_decoding:
            return Decoding.identity(self.suite.spec(task_id))
        try:
            return self.suite.decoding(task_id)
        except ScoreplexError as exc:
            raise task_module_error(task_id, exc) from exc

    def predict_mixed(
        self, task_ids: Sequence[str], texts: Sequence[str], ids: Sequence[str]
    ) -> list[tuple[list[int], Predictions]]:
        """Rows of mixed tasks, task by task (the tasks the previous call ended with first, while their models are
        still cached); see :class:`~scoreplex.predictions.MixedScorer`."""
        groups = group_by_task(task_ids)
        order = sorted(groups, key=lambda t: t not in self._recent)
        out = []
        for task_id in order:
            index = groups[task_id]
            out.append((index, self.predict(task_id, [texts[i] for i in index], [ids[i] for i in index])))
        self._recent = order[-self._cache_size :]
        return out


def open_scorer(
    suite: Suite | str | os.PathLike[str],
    backbone: str | os.PathLike[str] | Backbone | None = None,
    *,
    batch_size: int | None = None,
) -> MixedScorer:
    """The scorer that suits ``suite``'s method: the inference engine when its tasks share one backbone pass
    (``capabilities.shares_backbone_pass``), else a :class:`SuiteScorer`. Loads the backbone."""
    suite = suite if isinstance(suite, Suite) else Suite.open(suite, verify=False)  # files verify on first read
    if suite.method_object.capabilities.shares_backbone_pass:
        from scoreplex.engine import Engine

        return Engine(suite, backbone, **({} if batch_size is None else {"batch_size": batch_size}))
    return SuiteScorer(suite, backbone)


def human_reference(scorer, data: TaskData) -> HumanReference | None:
    """The human-human yardstick of a task's deployment criteria: the data's own second score where any response
    has one (source ``"data"``), else the two raters' agreement on the training data that the task module records
    under ``decoding.human`` in its ``task.json`` (source ``"training"``), else None.

    The suite may come from someone else: a record that is not an object, or a QWK that is not a finite number in
    ``[-1, 1]``, counts as absent (:func:`~scoreplex.metrics.training_reference`).
    """
    if data.second is not None:
        ref = reference_from_scores(data.spec, data.labels, data.second)
        if ref is not None:
            return ref
    decoding = scorer.suite.task_info(data.spec.id).get("decoding") or {}
    return training_reference(decoding.get("human") if isinstance(decoding, Mapping) else None)


def automated_reference(scorer, data: TaskData, automated: np.ndarray) -> HumanReference | None:
    """The yardstick of the automated part: agreement of two humans on the responses the engine scores alone.

    The data's own second score on the automated responses where it has one (source ``"data"``); else the module's
    ``decoding.human_automated`` record, the second rater on the validation responses its routing threshold
    automates (source ``"validation, automated responses"``); else :func:`human_reference` over all responses. The
    automated responses are the ones the engine is surest of and span a narrower score range, which lowers any
    rater pair's QWK, so a reference on the same kind of responses is the fair one.
    """
    if data.second is not None and automated.any():
        ref = reference_from_scores(data.spec, data.labels[automated], data.second[automated])
        if ref is not None:
            return ref
    decoding = scorer.suite.task_info(data.spec.id).get("decoding") or {}
    record = decoding.get("human_automated") if isinstance(decoding, Mapping) else None
    ref = training_reference(record)
    if ref is not None:
        return dataclasses.replace(ref, source="validation, automated responses")
    return human_reference(scorer, data)


def evaluate_suite(
    scorer,
    datasets: Mapping[str, TaskData],
    *,
    progress: bool = True,
    criteria: Criteria | None = None,
    baselines: Mapping[str, TaskData] | None = None,
) -> dict[str, Any]:
    """Metrics per task (and human-human agreement where a second score exists), the deployment criteria of
    Williamson, Xi & Breyer (2012), plus means and counts over tasks.

    ``scorer`` is anything with ``suite`` and ``predict(task_id, texts, ids) -> Predictions`` (SuiteScorer, Engine).
    ``criteria`` holds the thresholds (default :class:`~scoreplex.metrics.Criteria`: QWK >= 0.70, degradation <=
    0.10, |SMD| <= 0.15). ``baselines``: scored training data; when given, the simple baselines
    (:mod:`scoreplex.baselines`: lexical TF-IDF and length-only) are fitted on it per task and evaluated on the same
    responses, and the report gets their QWK and the suite's margin over the better one
    (:func:`~scoreplex.baselines.add_baseline_margins`; DataError if a task lacks training rows).

    Returns:
        ``{"tasks": {task id: metrics}, "mean_qwk", "qwk_undefined_tasks", "pooled", "human_mean_qwk" (when a task
        has a second score), "truncation" (the responses longer than the suite's max_length over all tasks, as
        :meth:`~scoreplex.encoding.LengthCounts.to_dict`; also per task, when the scorer counts them),
        "criteria_thresholds", "items_passing_criteria", "items_auto_meeting_human", "mean_automation_rate",
        "mean_ece", "mean_ece_floor", "items_calibration_rejected"}``.
        ``mean_qwk`` is the unweighted mean over the tasks whose QWK is defined (None when none is);
        ``qwk_undefined_tasks`` lists the others (one class in both truth and prediction); ``pooled`` is
        :func:`~scoreplex.metrics.pooled_metrics` over every response of every task.
        Each task's metrics are :func:`~scoreplex.metrics.evaluate_task`'s, plus ``"human"``
        (:func:`~scoreplex.metrics.human_agreement`, when the data has a second score), ``"criteria"``
        (:func:`~scoreplex.metrics.deployment_criteria` on every response) and ``"criteria_automated"``
        (:func:`~scoreplex.metrics.automated_criteria` on the responses whose ``Predictions.automated`` is True),
        both against :func:`human_reference`, and ``"calibration"`` (:func:`~scoreplex.decoding.task_calibration`:
        top-label ECE of the probabilities the scorer returns, beside what a perfectly calibrated model with the
        same confidences would measure on these responses, and its p-value). ``items_passing_criteria`` counts
        tasks whose criteria ``pass`` is True, ``items_auto_meeting_human`` tasks whose automated responses agree
        with the human score at least as well as two humans do on the same responses (``meets_human``),
        ``items_auto_meeting_human_all_responses`` the same against the two humans' agreement over all the task's
        responses (``criteria_automated["meets_human_all_responses"]``, the item's human-human figure), and
        ``mean_automation_rate`` is
        the unweighted mean over tasks of the share automated (None without tasks). Rows left out for a score off
        the task's scale (``TaskData.skipped``, read with ``off_scale="skip"``) are counted in ``"skipped_rows"``
        ``{"count", "rows" (the first 20 row numbers)}``, per task and in the summary by task; a task with no row
        left has no metrics.
    """
    criteria = Criteria() if criteria is None else criteria
    if not scorer.suite.task_ids:
        raise ConfigError(f"the suite at {scorer.suite.root} holds no tasks; train some with `scoreplex train`.")
    baseline_report = None
    if baselines is not None:  # first: bad training data fails before the suite has scored anything
        from scoreplex.baselines import add_baseline_margins, evaluate_baselines

        baseline_report = evaluate_baselines(baselines, datasets)
    per_task: dict[str, Any] = {}
    pairs: dict[str, tuple[Any, np.ndarray, np.ndarray]] = {}
    skipped: dict[str, dict[str, Any]] = {}
    for task_id, data in datasets.items():
        if not scorer.suite.has_task(task_id):
            raise UnknownTaskError(
                f"the data has task {task_id!r} but the suite does not; "
                f"suite tasks: {', '.join(scorer.suite.task_ids)}."
            )
        if not data.has_labels:
            raise DataError("evaluation needs scored responses.", task=task_id, file=data.source or None)
        if data.skipped:
            skipped[task_id] = {"count": len(data.skipped), "rows": list(data.skipped)[:20]}
        if len(data) == 0:  # every row was off the scale: nothing to measure
            continue
        t0 = time.perf_counter()
        counted = getattr(scorer, "length_counts", None)
        pred = scorer.predict(task_id, data.texts, data.ids)
        metrics = evaluate_task(data.spec, data.labels, pred.labels)
        metrics["seconds"] = round(time.perf_counter() - t0, 3)
        if counted is not None:  # the responses of this task longer than max_length (cut, or windowed)
            metrics["truncation"] = (scorer.length_counts - counted).to_dict()
        if data.second is not None:
            human = human_agreement(data.spec, data.labels, data.second)
            if human:
                metrics["human"] = human
        reference = human_reference(scorer, data)
        automated = np.asarray(pred.automated, dtype=bool)
        metrics["criteria"] = deployment_criteria(
            data.spec, data.labels, pred.labels, reference=reference, criteria=criteria
        )
        metrics["criteria_automated"] = automated_criteria(
            data.spec,
            data.labels,
            pred.labels,
            automated,
            reference=automated_reference(scorer, data, automated),
            criteria=criteria,
        )
        auto = metrics["criteria_automated"]
        metrics["criteria_automated"]["meets_human_all_responses"] = (
            None
            if reference is None or auto["exact"] is None
            else meets_human(
                {"qwk": auto["qwk"], "exact": auto["exact"]}, {"qwk": reference.qwk, "exact": reference.exact}
            )
        )
        metrics["calibration"] = task_calibration(data.spec, data.labels, pred.probs)
        if task_id in skipped:
            metrics["skipped_rows"] = skipped[task_id]
        per_task[task_id] = metrics
        pairs[task_id] = (data.spec, data.labels, pred.labels)
    undefined = undefined_tasks(per_task, "qwk")
    defined = [m["qwk"] for m in per_task.values() if m["qwk"] is not None]
    summary = {
        "tasks": per_task,
        "mean_qwk": float(np.mean(defined)) if defined else None,
        "qwk_undefined_tasks": undefined,
        "pooled": pooled_metrics(pairs),
    }
    if all("truncation" in m for m in per_task.values()):
        total = sum((LengthCounts.from_dict(m["truncation"]) for m in per_task.values()), LengthCounts())
        summary["truncation"] = total.to_dict()
    humans = [m["human"]["qwk"] for m in per_task.values() if "human" in m and m["human"]["qwk"] is not None]
    if humans:  # over the tasks whose human-human QWK is defined
        summary["human_mean_qwk"] = float(np.mean(humans))
    rates = [m["criteria_automated"]["automation_rate"] for m in per_task.values()]
    summary["criteria_thresholds"] = criteria.to_dict()
    summary["items_passing_criteria"] = sum(m["criteria"]["pass"] is True for m in per_task.values())
    summary["items_auto_meeting_human"] = sum(m["criteria_automated"]["meets_human"] is True for m in per_task.values())
    summary["items_auto_meeting_human_all_responses"] = sum(
        m["criteria_automated"]["meets_human_all_responses"] is True for m in per_task.values()
    )
    summary["mean_automation_rate"] = float(np.mean(rates)) if rates else None
    eces = [(c["ece"], c["floor"]) for m in per_task.values() if (c := m["calibration"])["ece"] is not None]
    summary["mean_ece"] = float(np.mean([e for e, _ in eces])) if eces else None
    summary["mean_ece_floor"] = float(np.mean([f for _, f in eces])) if eces else None
    summary["items_calibration_rejected"] = sum(
        p is not None and p < 0.05 for p in (m["calibration"]["p_value"] for m in per_task.values())
    )
    if skipped:
        summary["skipped_rows"] = skipped
    if baseline_report is not None:
        sources = sorted({d.source for d in baselines.values() if d.source})
        add_baseline_margins(summary, baseline_report, train_source=", ".join(sources))
    return summary


def calibrate_suite(
    suite: Suite,
    datasets: Mapping[str, TaskData],
    backbone: str | os.PathLike[str] | Backbone | None = None,
    *,
    route: bool = True,
    routing: RouteOptions | None = None,
    on_task_done=None,
) -> dict[str, Decoding]:
    """Fit each task's :class:`~scoreplex.decoding.Decoding` on held-out scored responses and store it in its module
    (``scoreplex calibrate``): for suites trained with ``decoding=False``, merged suites, or a fresh validation set.

    ``datasets`` must not overlap the responses the task was trained on (the fit would be optimistic). The human
    reference for routing is the data's own second score when it has one, else the one the module already records;
    the threshold is fitted as ``routing`` says (:class:`~scoreplex.decoding.RouteOptions`; None: its defaults).
    Raises UnknownTaskError for a task the suite lacks and DataError for unscored data.
    """
    from scoreplex.decoding import fit_decoding

    scorer = SuiteScorer(suite, backbone, decoding=False)
    fitted: dict[str, Decoding] = {}
    for task_id, data in datasets.items():
        if not suite.has_task(task_id):
            raise UnknownTaskError(
                f"the data has task {task_id!r} but the suite does not; suite tasks: {', '.join(suite.task_ids)}."
            )
        if not data.has_labels:
            raise DataError("calibration needs scored responses.", task=task_id, file=data.source or None)
        reference = human_reference(scorer, data)
        human = None
        if reference is not None and reference.qwk is not None and reference.exact is not None:
            human = {"qwk": reference.qwk, "exact": reference.exact, "adjacent": reference.adjacent, "n": reference.n}
        raw = scorer.predict(task_id, data.texts, data.ids)
        decoding = fit_decoding(
            data.spec, raw.probs, data.labels, human=human, second=data.second, route=route, routing=routing
        )
        suite.set_decoding(task_id, decoding)
        fitted[task_id] = decoding
        if on_task_done is not None:
            on_task_done(task_id, decoding)
    return fitted
