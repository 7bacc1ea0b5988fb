"""Evaluation reports: table rows for the terminal and the deployment-criteria report in Markdown."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scoreplex.metrics import WILLIAMSON_2012


def evaluation_table(report: Mapping[str, Any]) -> list[list[str]]:
    """Rows ``[task, n, QWK, accuracy, exact match, human QWK]`` for printing; a QWK that is undefined (one class
    in both truth and prediction, None in the report) shows as ``n/a``."""
    rows = []
    for tid, m in report["tasks"].items():
        human = m.get("human", {}).get("qwk") if m.get("human") else None
        rows.append(
            [
                tid,
                str(m.get("n", "")),
                _num(m.get("qwk")),
                _num(m.get("accuracy")),
                "" if m.get("exact_match") is None else f"{m['exact_match']:.3f}",
                "" if human is None else f"{human:.3f}",
            ]
        )
    return rows


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The per-task mean and the pooled figures of an :func:`~scoreplex.scorer.evaluate_suite` result, one line
    each: ``mean QWK 0.712 over 8 of 10 tasks (2 undefined: a, b)`` and ``pooled over 240 responses of 10 tasks:
    QWK ..., Pearson r ..., RMSE ... (scores on 0..1)``."""
    tasks = report.get("tasks") or {}
    undefined = list(report.get("qwk_undefined_tasks") or [])
    mean = f"mean QWK {_num(report.get('mean_qwk'))} over {len(tasks) - len(undefined)} of {len(tasks)} tasks"
    if undefined:
        shown = ", ".join(undefined[:10]) + (f", ... ({len(undefined) - 10} more)" if len(undefined) > 10 else "")
        mean += f" ({len(undefined)} with QWK undefined, one class in both scores and predictions: {shown})"
    lines = [mean]
    pooled = report.get("pooled")
    if pooled:
        qwk = _num(pooled.get("qwk")) + (f" ({pooled['qwk_note']})" if pooled.get("qwk_note") else "")
        lines.append(
            f"pooled over {pooled.get('n', 0)} responses of {pooled.get('n_tasks', 0)} tasks: QWK {qwk}, "
            f"Pearson r {_num(pooled.get('pearson_r'))}, RMSE {_num(pooled.get('rmse'))} (scores on 0..1)"
        )
    return lines


def with_baseline_columns(
    report: Mapping[str, Any], header: list[str], rows: list[list[str]]
) -> tuple[list[str], list[list[str]]]:
    """``header`` and ``rows`` (one per task, in report order) with ``best baseline`` (its name and QWK) and
    ``margin`` (the suite's QWK minus it) appended when the report holds baselines
    (:func:`scoreplex.baselines.add_baseline_margins`); unchanged otherwise. ``n/a``: not measured."""
    if "baselines" not in report:
        return header, rows
    extra = []
    for m in report["tasks"].values():
        b = m.get("baselines") or {}
        best = "n/a" if b.get("best") is None else f"{b['best']} {b['best_qwk']:.3f}"
        extra.append([best, "n/a" if b.get("margin") is None else f"{b['margin']:+.3f}"])
    return header + ["best baseline", "margin"], [r + e for r, e in zip(rows, extra, strict=True)]


def baseline_table(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows for ``scoreplex baseline``: per task ``n`` (test), ``n train``, each baseline's QWK and
    accuracy, and the best one (:func:`scoreplex.baselines.evaluate_baselines`'s report). ``n/a``: not measured."""
    names = list(report["baselines"])
    header = ["task", "n", "n train"] + [f"{n} {k}" for n in names for k in ("QWK", "accuracy")] + ["best"]
    rows = []
    for tid, t in report["tasks"].items():
        cells = [_num(t[n].get(k)) for n in names for k in ("qwk", "accuracy")]
        rows.append([tid, str(t["n"]), str(t["n_train"]), *cells, t["best"] or "n/a"])
    return header, rows


# ---------------------------------------------------------------------------------------------- deployment criteria

_VERDICT = {True: "pass", False: "FAIL", None: "n/a"}
_YES_NO = {True: "yes", False: "no", None: "n/a"}


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _thresholds(report: Mapping[str, Any]) -> dict[str, Any]:
    return dict(report.get("criteria_thresholds") or {})


def _criteria_headers(th: Mapping[str, Any]) -> list[str]:
    """Pass/fail column names with their thresholds, e.g. ``QWK >= 0.70``."""
    heads = [
        f"QWK >= {th.get('min_qwk', 0.70):.2f}",
        f"degradation <= {th.get('max_degradation', 0.10):.2f}",
        f"|SMD| <= {th.get('max_smd', 0.15):.2f}",
    ]
    if th.get("min_exact") is not None:
        heads.append(f"exact >= {th['min_exact']:.2f}")
    if th.get("min_adjacent") is not None:
        heads.append(f"adjacent >= {th['min_adjacent']:.2f}")
    return heads


def _criteria_keys(th: Mapping[str, Any]) -> list[str]:
    keys = ["qwk", "degradation", "smd"]
    keys += [k for k, f in (("exact", "min_exact"), ("adjacent", "min_adjacent")) if th.get(f) is not None]
    return keys


def _value(c: Mapping[str, Any] | None, key: str) -> str:
    """A criterion's value, with the dimension it comes from for a multi-dimension task."""
    entry = (c or {}).get("criteria", {}).get(key) or {}
    text = _num(entry.get("value"))
    return f"{text} ({entry['dimension']})" if entry.get("dimension") else text


def _verdicts(c: Mapping[str, Any] | None, keys: list[str]) -> list[str]:
    crit = (c or {}).get("criteria", {})
    return [_VERDICT[(crit.get(k) or {}).get("pass")] for k in keys]


def evaluation_criteria_table(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows for ``scoreplex evaluate``: :func:`evaluation_table`'s columns, then degradation, SMD, a
    pass/fail column per criterion and overall, the share automated and whether the automated responses agree with
    the human score at least as well as two humans do. ``n/a``: not computable (e.g. no human-human reference)."""
    th = _thresholds(report)
    keys = _criteria_keys(th)
    header = ["task", "n", "QWK", "accuracy", "exact match", "human QWK", "degradation", "SMD"]
    header += _criteria_headers(th) + ["criteria", "automated", "auto >= human"]
    rows = []
    for base, m in zip(evaluation_table(report), report["tasks"].values(), strict=True):
        c, a = m.get("criteria"), m.get("criteria_automated") or {}
        rows.append(
            base
            + [_value(c, "degradation"), _value(c, "smd")]
            + _verdicts(c, keys)
            + [_VERDICT[(c or {}).get("pass")], _pct(a.get("automation_rate")), _YES_NO[a.get("meets_human")]]
        )
    return with_baseline_columns(report, header, rows)


def calibration_line(report: Mapping[str, Any]) -> str | None:
    """One line on the calibration of an :func:`~scoreplex.scorer.evaluate_suite` result (None without it)."""
    if report.get("mean_ece") is None:
        return None
    return (
        f"calibration: mean top-label ECE {_num(report['mean_ece'])}; a perfectly calibrated model with the same "
        f"confidences would measure {_num(report.get('mean_ece_floor'))} on these responses (consistency "
        f"resampling); beyond chance (p < 0.05) on {report.get('items_calibration_rejected', 0)} of "
        f"{len(report.get('tasks') or {})} tasks"
    )


def calibration_markdown(report: Mapping[str, Any]) -> list[str]:
    """The calibration section of :func:`criteria_markdown`: per task and rubric dimension the top-label ECE of the
    returned probabilities, what a perfectly calibrated model with the same confidences would measure on as many
    responses (mean and 95th percentile over 1,000 draws; Bröcker & Smith 2007), and the p-value."""
    tasks = report.get("tasks") or {}
    rows = []
    for tid, m in tasks.items():
        for dim, c in ((m.get("calibration") or {}).get("dimensions") or {}).items():
            if c is None:
                continue
            verdict = "consistent" if c["p_value"] >= 0.05 else "**miscalibrated**"
            name = tid if len(m["calibration"]["dimensions"]) == 1 else f"{tid} ({dim})"
            rows.append(
                [name, str(c["n"]), _num(c["ece"]), f"{_num(c['floor'])} ({_num(c['floor_q95'])})"]
                + [f"{c['p_value']:.2f}", verdict]
            )
    if not rows:
        return []
    header = ["task", "n", "ECE", "calibrated model's ECE: mean (95th pct)", "p", "verdict"]
    return [
        "",
        "## Calibration",
        "",
        "Top-label expected calibration error (15 equal-width bins; Guo et al. 2017) of the probabilities the suite "
        "returns (after its temperature, where the task module holds one). A finite test set gives even a perfectly "
        "calibrated model a positive ECE: the next column is what such a model with the same confidences would "
        "measure on as many responses (each response marked right with probability equal to its confidence; "
        "consistency resampling, Bröcker & Smith 2007), and p is the share of those draws with an ECE at least the "
        "measured one. `miscalibrated`: p < 0.05.",
        "",
        *_md_table(header, rows),
    ]


def _md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, line breaks as spaces)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]], left: tuple[str, ...] = ("task", "reference")) -> list[str]:
    align = ["---" if h in left else "---:" for h in header]
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(x) for x in r) + " |" for r in rows]
    return lines


def criteria_markdown(report: Mapping[str, Any], *, title: str = "Deployment criteria") -> str:
    """The deployment-criteria report of an :func:`~scoreplex.scorer.evaluate_suite` result as Markdown.

    A summary, then one table for all responses and one for the automated responses (route ``auto``): per task its
    QWK, human-human QWK and where it comes from, degradation, SMD, exact and adjacent agreement, a pass/fail column
    per criterion and overall. Multi-dimension tasks show each criterion's worst dimension (named in brackets); a
    task passes only if every dimension does. ``n/a`` marks a value that cannot be computed.
    """
    th = _thresholds(report)
    keys = _criteria_keys(th)
    tasks: Mapping[str, Any] = report["tasks"]
    n_tasks = len(tasks)
    tests = ", ".join(_criteria_headers(th))
    lines = [f"# {_md_cell(title)}", ""]
    lines.append(
        f"Criteria ({WILLIAMSON_2012}): {tests}. Degradation is human-human QWK minus engine-human QWK; SMD is "
        "(mean engine - mean human) / sqrt((var engine + var human) / 2), sample variances. A task passes when every "
        "criterion that can be computed passes on every rubric dimension; `n/a` marks one that cannot be computed "
        "(degradation needs a human-human reference: the file's second score, else the two raters on the training "
        "data, recorded by the task module)."
    )
    lines.append("")
    lines += [f"- {line[0].upper()}{line[1:]}" for line in summary_lines(report)]
    lines.append(f"- Tasks meeting the criteria: **{report.get('items_passing_criteria', 0)} of {n_tasks}**")
    lines.append(f"- Mean automation rate (unweighted over tasks): **{_pct(report.get('mean_automation_rate'))}**")
    lines.append(
        f"- Tasks whose automated responses agree with the human score at least as well as two humans do (QWK and "
        f"exact agreement) on the same responses: **{report.get('items_auto_meeting_human', 0)} of {n_tasks}**; "
        f"as well as two humans do over all the task's responses: "
        f"**{report.get('items_auto_meeting_human_all_responses', 0)} of {n_tasks}**"
    )
    lines += ["", "## All responses", ""]
    header = ["task", "n", "QWK", "human QWK", "reference", "degradation", "SMD", "exact", "human exact", "adjacent"]
    header += _criteria_headers(th) + ["pass"]
    rows = []
    for tid, m in tasks.items():
        c = m.get("criteria") or {}
        rows.append(
            [tid, str(c.get("n", m.get("n", "")))]
            + [_value(c, "qwk"), _num(c.get("human_qwk")), c.get("human_source") or "none"]
            + [_value(c, "degradation"), _value(c, "smd"), _num(c.get("exact")), _num(c.get("human_exact"))]
            + [_num(c.get("adjacent"))]
            + _verdicts(c, keys)
            + [_VERDICT[c.get("pass")]]
        )
    lines += _md_table(header, rows)
    lines += ["", '## Automated responses (route "auto")', ""]
    header = ["task", "automated", "rate", "QWK", "human QWK", "degradation", "SMD", "exact", "human exact"]
    header += ["adjacent"] + _criteria_headers(th) + ["pass", "meets human"]
    rows = []
    for tid, m in tasks.items():
        a = m.get("criteria_automated") or {}
        rows.append(
            [tid, f"{a.get('n_automated', 0)} of {m.get('n', '')}", _pct(a.get("automation_rate"))]
            + [_value(a, "qwk"), _num(a.get("human_qwk")), _value(a, "degradation"), _value(a, "smd")]
            + [_num(a.get("exact")), _num(a.get("human_exact")), _num(a.get("adjacent"))]
            + _verdicts(a, keys)
            + [_VERDICT[a.get("pass")], _YES_NO[a.get("meets_human")]]
        )
    lines += _md_table(header, rows)
    lines += calibration_markdown(report)
    pooled = report.get("pooled") or {}
    lines += [
        "",
        "QWK is `n/a` where it is undefined (every response in one class, in both the human scores and the "
        "predictions) and such tasks are left out of the mean. Pooled figures treat every scored response of every "
        f"task as one sample, with {pooled.get('scale', 'scores normalised to 0..1')}; pooled QWK needs one scale "
        "(the same number of classes) across tasks.",
        "",
        "The automated responses are held against the human-human agreement on all double-scored responses; the "
        "engine automates the responses it is surest of, which tend to be easier for human raters too, so this "
        "comparison flatters the engine somewhat. Exact and adjacent agreement in the tables are on every rubric "
        "dimension at once (a multi-dimension task's criteria columns use each dimension's own).",
        "",
    ]
    return "\n".join(lines)


def write_criteria_markdown(path: str | os.PathLike[str], report: Mapping[str, Any], **kwargs: Any) -> Path:
    """Write :func:`criteria_markdown` of ``report`` to ``path`` (UTF-8, atomically: a reader never sees half a
    file). Keyword arguments go to :func:`criteria_markdown`. Returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(criteria_markdown(report, **kwargs), encoding="utf-8")
    os.replace(tmp, path)
    return path
