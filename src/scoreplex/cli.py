"""The ``scoreplex`` command line. No logic here: each command parses, calls one library function, prints.

Heavy libraries (torch, transformers, peft) are imported inside the commands so that ``--help`` is instant. Help is
Click's plain layout (``rich_markup_mode=None``): it wraps to any width, where rich's option table cuts long option
names at 80 columns. No traceback reaches a user: a :class:`~scoreplex.errors.ScoreplexError` or an ``OSError``
(file not found, permission denied, disk full) that a command does not handle is one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import errno
import json
import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup


def _error_line(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False, markup=True)


_OS_FIXES = {
    errno.ENOENT: "check the path: the file or a folder in it does not exist.",
    errno.EACCES: "check the permissions, or choose a path you can write to.",
    errno.EPERM: "check the permissions, or choose a path you can write to.",
    errno.EROFS: "choose a path on a writable disk.",
    errno.ENOSPC: "free some disk space (or choose another disk), then run the same command again.",
    errno.EDQUOT: "free some disk space (or choose another disk), then run the same command again.",
    errno.EEXIST: "choose another path, or move the file that is in the way.",
    errno.ENOTDIR: "choose another path: a part of it is a file, not a folder.",
    errno.EISDIR: "choose another path: a folder is in the way.",
}


def _os_error_text(exc: OSError) -> str:
    """One line for an OSError: what failed, the path(s) and a fix, e.g. ``No such file or directory: data.csv.``"""
    from rich.markup import escape

    what = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    fix = _OS_FIXES.get(exc.errno, "check the path and the disk, then run the same command again.")
    return escape(f"{what}: {' -> '.join(paths)}. Fix: {fix}" if paths else f"{what}. Fix: {fix}")


class _Commands(TyperGroup):
    """The command group with the last-resort handler (it runs under ``scoreplex``, ``main()`` and CliRunner)."""

    def invoke(self, ctx):
        from scoreplex.errors import ScoreplexError

        try:
            return super().invoke(ctx)
        except ScoreplexError as exc:
            from rich.markup import escape

            _error_line(escape(str(exc)))
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # output piped into `head`: Click's own quiet exit
                raise
            _error_line(_os_error_text(exc))
        raise typer.Exit(code=2)


app = typer.Typer(
    cls=_Commands,
    help="scoreplex: many automated-scoring models as one efficient deployment.\n\n"
    "Train per-task LoRA adapters (or full fine-tunes, or heads) on one shared encoder, evaluate them, and score "
    "files of student responses. Start with `scoreplex demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

TextCol = Annotated[str, typer.Option("--text-col", help="Column holding the response text.")]
TaskCol = Annotated[str, typer.Option("--task-col", help="Column holding each row's task id.")]
TaskId = Annotated[
    str | None, typer.Option("--task-id", help="Fixed task id for a single-task file (then no task column is read).")
]
IdCol = Annotated[str, typer.Option("--id-col", help="Column of unique response ids (generated when absent).")]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        help="Score column per rubric dimension as DIM=COLUMN (repeatable), or just COLUMN for a single-score task. "
        "Default: a column named like each dimension, or 'score'/'label'.",
    ),
]
SecondOpt = Annotated[
    list[str] | None, typer.Option("--second", help="Second-rater column as DIM=COLUMN (repeatable), or COLUMN.")
]
TasksOpt = Annotated[
    Path | None,
    typer.Option("--tasks", help="JSON file of task specs (ids, rubric dimensions). Default: inferred from scores."),
]
EncodingOpt = Annotated[str, typer.Option("--encoding", help="Text encoding of the input file.")]
DelimiterOpt = Annotated[
    str | None,
    typer.Option(
        "--delimiter",
        help="Field delimiter of a CSV/TSV file, e.g. ';' or '\\t' for a tab (default: read from a CSV header line; "
        "a tab for TSV).",
    ),
]
BackboneOpt = Annotated[
    str, typer.Option("--backbone", help="'minilm' (packaged all-MiniLM-L6-v2) or a local Hugging Face folder.")
]
RouteConfidenceOpt = Annotated[
    str,
    typer.Option(
        "--route-confidence",
        help="Routing: the confidence thresholded. quadratic (1 - the expected quadratic disagreement with the "
        "predicted score; automated more and met the second rater more often out of fold on ASAP-SAS, "
        "docs/results/routing.md) or top (the predicted class's probability).",
    ),
]
RouteRuleOpt = Annotated[
    str,
    typer.Option(
        "--route-rule",
        help="Routing: lowest (the lowest threshold whose validation responses meet the second rater: automates "
        "most, clears the bar on new responses less often) or confident (the lowest threshold that meets it in "
        "--route-level of bootstrap resamples: automates less, with a margin).",
    ),
]
RouteLevelOpt = Annotated[
    float,
    typer.Option("--route-level", help="Routing, --route-rule confident: the share of resamples, in (0, 1)."),
]


def _ray_opt(what: str, without: str | None = None):
    """The ``--ray ADDRESS`` option of a command: ``what`` it does on Ray, and what happens without it."""
    return typer.Option(
        "--ray",
        metavar="ADDRESS",
        help=f"{what} 'local' starts a Ray cluster on this machine, 'auto' joins the one `ray start --head` "
        "started, or give a cluster's address. Needs pip install 'scoreplex[ray]'.",
        show_default=without or False,
    )


def _mapping(values: list[str] | None, option: str, default_dim: str = "score") -> dict[str, str] | None:
    from scoreplex.errors import ConfigError

    if not values:
        return None
    out = {}
    for v in values:
        dim, sep, col = v.partition("=")
        if not sep:
            dim, col = default_dim, v
        if not dim.strip() or not col.strip():
            raise ConfigError(
                f"{option} {v!r} names no {'column' if dim.strip() else 'dimension'}; give DIM=COLUMN "
                "(e.g. score=Score1), or just COLUMN for a single-score task."
            )
        out[dim.strip()] = col.strip()
    return out


def _columns(text_col, task_col, task_id, id_col, label, second):
    from scoreplex.data.readers import ColumnMap

    return ColumnMap(
        text=text_col,
        task=None if task_id else task_col,
        task_id=task_id,
        id=id_col,
        labels=_mapping(label, "--label"),
        second=_mapping(second, "--second"),
    )


def _route_options(confidence: str, rule: str, level: float, *, fitted: bool, off: str):
    """The :class:`~scoreplex.decoding.RouteOptions` of ``--route-confidence/--route-rule/--route-level``, checked
    before any data is read. ConfigError for an unknown value, for options changed from their defaults where the
    command fits no routing threshold (``fitted`` False: the ``off`` flag was given), and for ``--route-level``
    without ``--route-rule confident`` (the only rule that reads it)."""
    from scoreplex.decoding import ROUTE_CONFIDENCE, ROUTE_LEVEL, ROUTE_RULE, RouteOptions
    from scoreplex.errors import ConfigError

    options = RouteOptions(confidence, rule, level)
    given = [
        flag
        for flag, value, default in (
            ("--route-confidence", confidence, ROUTE_CONFIDENCE),
            ("--route-rule", rule, ROUTE_RULE),
            ("--route-level", level, ROUTE_LEVEL),
        )
        if value != default
    ]
    if given and not fitted:
        raise ConfigError(
            f"{', '.join(given)} given with {off}, which fits no routing threshold; drop {off} or those options."
        )
    if level != ROUTE_LEVEL and rule != "confident":
        raise ConfigError(
            f"--route-level is read by --route-rule confident only (here: --route-rule {rule}); add --route-rule "
            "confident or drop --route-level."
        )
    return options


def _fail(exc: Exception) -> None:
    from rich.markup import escape

    _error_line(escape(str(exc)))
    raise typer.Exit(code=2)


def _delimiter(value: str | None) -> str | None:
    """``--delimiter`` as typed: ``\\t`` or ``tab`` is a tab (a shell passes backslash-t literally)."""
    if value is None:
        return None
    return "\t" if value in ("\\t", "tab", "TAB") else value


def _interrupted(out: Path, task_ids: list[str], current: str | None) -> None:
    from scoreplex.training.suite import train_progress

    state = train_progress(out, task_ids, current)
    total = len(task_ids)
    done = f"{len(state.finished)} of {total} tasks finished and saved in {out}" if total else "no task finished"
    if state.finished:
        done += f" ({', '.join(state.finished)})"
    if state.current is None:
        where = "no task was in training"
    elif state.checkpoint_epochs:
        where = (
            f"task {state.current} was interrupted; its checkpoint {state.checkpoint} holds "
            f"{state.checkpoint_epochs} finished epoch{'s' if state.checkpoint_epochs != 1 else ''}"
        )
    else:
        where = f"task {state.current} was interrupted before its first epoch finished (no checkpoint yet)"
    then = ""
    if state.current is not None:
        then = (
            f"; {state.current} continues after epoch {state.checkpoint_epochs}"
            if state.checkpoint_epochs
            else f"; {state.current} starts over"
        )
    typer.echo(f"interrupted: {done}; {where}.", err=True)
    typer.echo(f"to resume, run the same command again: finished tasks are kept{then}.", err=True)


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for h in header:
        t.add_column(h)
    for r in rows:
        t.add_row(*r)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: never cut task ids to 80 columns
        console = Console(width=max(console.width, 200))
    console.print(title, soft_wrap=True, highlight=False, markup=False)  # one line, never wrapped to the table
    console.print(t)


def _qwk_text(qwk: float | None) -> str:
    return "n/a (undefined: one class in both scores and predictions)" if qwk is None else f"{qwk:.3f}"


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Scored responses: CSV, TSV, JSONL or Parquet.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Suite folder to write (re-running resumes it).")],
    method: Annotated[
        str,
        typer.Option(
            help="lora (an adapter + head per task), full (fine-tune a copy per task), head, or cross-item (one "
            "adapter over question + response pairs for all tasks at once, a head per task)."
        ),
    ] = "lora",
    tasks: TasksOpt = None,
    text_col: TextCol = "text",
    task_col: TaskCol = "task",
    task_id: TaskId = None,
    id_col: IdCol = "id",
    label: LabelOpt = None,
    second: SecondOpt = None,
    encoding: EncodingOpt = "utf-8",
    backbone: BackboneOpt = "minilm",
    pooling: Annotated[str, typer.Option(help="mean, cls or pooler.")] = "mean",
    epochs: Annotated[
        int | None,
        typer.Option(help="Maximum epochs, early stopping on validation QWK (default: `scoreplex methods`)."),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: see `scoreplex methods`).")] = None,
    head_warmup_epochs: Annotated[
        int | None,
        typer.Option(help="Epochs fitting the head on frozen features first (default: the method's)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Responses per step.")] = 32,
    patience: Annotated[
        int | None,
        typer.Option(
            help="Epochs without a better validation QWK before stopping (0: never; see `scoreplex methods`).",
            show_default="the method's",
        ),
    ] = None,
    max_length: Annotated[int | None, typer.Option(help="Token cap (default: 99th percentile of the data).")] = None,
    long_inputs: Annotated[
        str,
        typer.Option(
            "--long-inputs",
            help="Responses longer than max_length: truncate (keep the first max_length tokens) or windows "
            "(overlapping windows of max_length tokens, their pooled vectors combined as --window-pool says; stored "
            "in the suite, used by every scorer).",
        ),
    ] = "truncate",
    window_stride: Annotated[
        int | None,
        typer.Option("--window-stride", help="Windows: tokens between window starts (default: half a window)."),
    ] = None,
    max_windows: Annotated[
        int, typer.Option("--max-windows", help="Windows: at most this many per response (the rest is cut).")
    ] = 16,
    window_pool: Annotated[
        str,
        typer.Option(
            "--window-pool",
            help="Windows: how each response's window vectors are combined for its head: mean+max (their mean and "
            "element-wise maximum side by side; better than mean on ASAP-SAS validation, "
            "docs/results/window-pooling.md) or mean.",
        ),
    ] = "mean+max",
    length_feature: Annotated[
        bool,
        typer.Option(
            "--length-feature/--no-length-feature",
            help="Give each task's head the response's log token count (before any cut) as an extra input.",
        ),
    ] = False,
    val_fraction: Annotated[float, typer.Option(help="Share of each task held out for validation.")] = 0.1,
    min_val_rows: Annotated[
        int,
        typer.Option(
            "--min-val-rows",
            help="A task whose validation split has fewer responses than this (or one class) is a small item: "
            "named in a warning, and cross-validated with --cv-folds (0: flag single-class splits only).",
        ),
    ] = 20,
    cv_folds: Annotated[
        int,
        typer.Option(
            "--cv-folds",
            help="Small items: choose their epochs by k-fold cross-validation within the item, then refit on all "
            "their responses (0: train them on their own split). cross-item: with any small item, the joint model's "
            "epochs by k-fold cross-validation over all items, then a refit on all responses.",
        ),
    ] = 0,
    lora_r: Annotated[
        int | None,
        typer.Option(
            help="LoRA rank [default: 16 for lora (chosen on ASAP-SAS validation, docs/results/recipe.md), 8 for "
            "cross-item]."
        ),
    ] = None,
    lora_alpha: Annotated[
        int | None, typer.Option(help="LoRA alpha (scaling = alpha / r) [default: 2 x the rank].")
    ] = None,
    lora_targets: Annotated[str, typer.Option(help="qv, attention, all-linear, or module names a,b.")] = "qv",
    cross_item_head: Annotated[
        str | None,
        typer.Option(
            "--cross-item-head",
            help="--method cross-item: per-item (a softmax head per item) or shared-ordinal (one latent score for "
            "all items, per-item thresholds; new items can join with no scored answers).",
        ),
    ] = None,
    class_weighting: Annotated[bool, typer.Option(help="Weight classes by inverse frequency.")] = False,
    lexical: Annotated[
        bool,
        typer.Option(
            "--lexical/--no-lexical",
            help="Fit a per-task TF-IDF + logistic-regression model and stack it onto the neural head where "
            "validation says it helps (cross-fitted; otherwise nothing is stored).",
        ),
    ] = True,
    decoding: Annotated[
        bool,
        typer.Option(
            "--decoding/--no-decoding",
            help="Fit each task's decoding on its validation split: temperature, ordinal cut points or binary "
            "thresholds, and a routing threshold at the two raters' agreement when the data has a second score.",
        ),
    ] = True,
    route_confidence: RouteConfidenceOpt = "quadratic",
    route_rule: RouteRuleOpt = "lowest",
    route_level: RouteLevelOpt = 0.8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    delimiter: DelimiterOpt = None,
    progress: Annotated[
        bool,
        typer.Option(
            "--progress/--no-progress",
            help="A bar per task on a terminal; elsewhere (nohup, CI) one line per epoch on stderr.",
        ),
    ] = True,
    ray: Annotated[
        str | None,
        _ray_opt(
            "Train on a Ray cluster, one Ray task per task (same modules as without; per-task methods only).",
            "train here, one task after another",
        ),
    ] = None,
    ray_cpus_per_task: Annotated[
        float, typer.Option("--ray-cpus-per-task", help="--ray: logical CPUs per task (also its torch threads).")
    ] = 1.0,
    ray_memory_per_task: Annotated[
        int | None,
        typer.Option("--ray-memory-per-task", help="--ray: MB of memory reserved per task (default: none)."),
    ] = None,
    ray_retries: Annotated[
        int,
        typer.Option("--ray-retries", help="--ray: retries of a task after an unexpected error or a lost worker."),
    ] = 1,
) -> None:
    """Train one module per task into a suite folder (resumable: re-run the same command after an interruption).

    Ctrl-C stops cleanly: finished tasks stay saved and the task in training keeps its last epoch checkpoint.
    """
    from scoreplex.errors import ScoreplexError

    task_ids: list[str] = []
    current: dict[str, str] = {}  # {"task": the task in training}, kept by train_suite's on_task_start
    try:
        from scoreplex.data.load import read_dataset
        from scoreplex.data.readers import reading_notes
        from scoreplex.encoding import LongInputs
        from scoreplex.training.suite import (
            TrainOptions,
            default_config,
            default_settings,
            train_suite,
            training_truncation,
        )

        routing = _route_options(route_confidence, route_rule, route_level, fitted=decoding, off="--no-decoding")
        cols = _columns(text_col, task_col, task_id, id_col, label, second)
        datasets = read_dataset(
            data, columns=cols, tasks_file=tasks, encoding=encoding, delimiter=_delimiter(delimiter)
        )
        for line in reading_notes(datasets):
            typer.echo(line, err=True)
        task_ids = list(datasets)
        config = default_config(
            method,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            patience=patience,
            seed=seed,
            class_weighting=class_weighting,
            head_warmup_epochs=head_warmup_epochs,
        )
        if lora_r is not None and lora_alpha is None:
            lora_alpha = 2 * lora_r  # scaling 2, as the defaults
        settings = default_settings(
            method,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            length_feature=length_feature,
            extra={"head": cross_item_head} if cross_item_head else {},
        )
        options = TrainOptions(
            method=method,
            backbone=backbone,
            pooling=pooling,
            max_length=max_length,
            val_fraction=val_fraction,
            min_val_rows=min_val_rows,
            cv_folds=cv_folds,
            config=config,
            settings=settings,
            decoding=decoding,
            routing=routing,
            lexical=lexical,
            progress=progress,
            long_inputs=LongInputs(
                long_inputs,
                stride=window_stride,
                max_windows=max_windows,
                pool=window_pool if long_inputs == "windows" else "mean",  # truncate pools nothing
            ),
        )
        callbacks = dict(
            on_task_done=lambda r: typer.echo(
                f"{r.task_id}: validation QWK {_qwk_text(r.val_metrics['qwk'])} ({r.fit.epochs_run} epochs, "
                f"{r.seconds:.0f} s, {r.module_bytes:,} bytes)"
            ),
            on_warning=lambda message: typer.echo(f"warning: {message}", err=True),
        )
        if ray is None:
            suite = train_suite(datasets, out, options, on_task_start=lambda t: current.update(task=t), **callbacks)
        else:
            from scoreplex.cluster.train import RayTrainResources, train_suite_ray

            resources = RayTrainResources(ray_cpus_per_task, ray_memory_per_task, ray_retries)
            suite = train_suite_ray(
                datasets,
                out,
                options,
                address=ray,
                resources=resources,
                on_task_failed=lambda t, error: typer.echo(f"{t}: FAILED on Ray: {error}", err=True),
                **callbacks,
            )
    except ScoreplexError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _interrupted(out, task_ids, current.get("task"))
        raise typer.Exit(code=130) from None
    counts = training_truncation(suite)
    if counts is not None:
        typer.echo(f"training data {counts.describe(suite.max_length, suite.long_inputs)}")
    typer.echo(f"suite written to {out} ({len(suite.task_ids)} tasks, {suite.total_bytes:,} bytes)")


@app.command()
def evaluate(
    suite: Annotated[Path, typer.Argument(help="Suite folder.")],
    data: Annotated[Path, typer.Argument(help="Scored responses to evaluate on.")],
    text_col: TextCol = "text",
    task_col: TaskCol = "task",
    task_id: TaskId = None,
    id_col: IdCol = "id",
    label: LabelOpt = None,
    second: SecondOpt = None,
    encoding: EncodingOpt = "utf-8",
    backbone: Annotated[str | None, typer.Option(help="Backbone (default: the one the suite was trained on).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the full metrics as JSON here.")] = None,
    delimiter: DelimiterOpt = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Write the deployment-criteria report as Markdown here.")
    ] = None,
    min_qwk: Annotated[
        float, typer.Option("--min-qwk", help="Deployment criterion: engine-human QWK at least this (-1..1).")
    ] = 0.70,
    max_degradation: Annotated[
        float,
        typer.Option(
            "--max-degradation",
            help="Deployment criterion: human-human QWK minus engine-human QWK at most this (0..2).",
        ),
    ] = 0.10,
    max_smd: Annotated[
        float,
        typer.Option("--max-smd", help="Deployment criterion: |standardized mean difference| at most this (>= 0)."),
    ] = 0.15,
    min_exact: Annotated[
        float | None,
        typer.Option("--min-exact", help="Optional criterion: exact agreement at least this (0..1; default: none)."),
    ] = None,
    min_adjacent: Annotated[
        float | None,
        typer.Option(
            "--min-adjacent", help="Optional criterion: adjacent agreement at least this (0..1; default: none)."
        ),
    ] = None,
    baselines: Annotated[
        Path | None,
        typer.Option(
            "--baselines",
            help="Scored training file (same columns): fit the lexical TF-IDF and length-only baselines on it per "
            "task and show their QWK and the suite's margin over the better one.",
        ),
    ] = None,
) -> None:
    """QWK, accuracy, adjacent agreement, F1, exact match per task (and human-human agreement if a second score),
    and the deployment criteria of Williamson, Xi & Breyer (2012) with pass/fail, for all responses and for the
    automated ones (defaults: QWK >= 0.70, degradation <= 0.10, |SMD| <= 0.15); with --baselines, the margin over
    the simple baselines."""
    from scoreplex.errors import ConfigError, ScoreplexError

    try:
        from scoreplex.data.load import read_dataset
        from scoreplex.data.readers import reading_notes
        from scoreplex.encoding import LengthCounts
        from scoreplex.metrics import Criteria
        from scoreplex.paths import prepare_output_folder
        from scoreplex.reports.evaluation import (
            calibration_line,
            evaluation_criteria_table,
            summary_lines,
            write_criteria_markdown,
        )
        from scoreplex.scorer import SuiteScorer, evaluate_suite
        from scoreplex.suite import Suite, write_json_atomic

        criteria = Criteria(
            min_qwk=min_qwk,
            max_degradation=max_degradation,
            max_smd=max_smd,
            min_exact=min_exact,
            min_adjacent=min_adjacent,
        )
        outputs = {"--report": (report, "metrics.json"), "--markdown": (markdown, "criteria.md")}
        for option, (path, example) in outputs.items():  # a bad output path fails now, not after the evaluation
            if path is None:
                continue
            if path.is_dir():
                raise ConfigError(f"{option} {path} is a folder; give a file path, e.g. {path / example}.")
            prepare_output_folder(path.parent, output=path)
        if report is not None and markdown is not None and report.resolve() == markdown.resolve():
            raise ConfigError(f"--report and --markdown are the same file ({report}); give two different paths.")
        s = Suite.open(suite)
        if not s.task_ids:
            raise ConfigError(f"the suite at {suite} holds no tasks; train some with `scoreplex train`.")
        specs = {tid: s.spec(tid) for tid in s.task_ids}
        cols = _columns(text_col, task_col, task_id, id_col, label, second)
        datasets = read_dataset(
            data, columns=cols, specs=specs, encoding=encoding, delimiter=_delimiter(delimiter), off_scale="skip"
        )
        for line in reading_notes(datasets):
            typer.echo(line, err=True)
        train_sets = None
        if baselines is not None:
            train_sets = read_dataset(
                baselines, columns=cols, specs=specs, encoding=encoding, delimiter=_delimiter(delimiter)
            )
        result = evaluate_suite(SuiteScorer(s, backbone=backbone), datasets, criteria=criteria, baselines=train_sets)
        counts = LengthCounts.from_dict(result.get("truncation"))
        if counts is not None:
            typer.echo(counts.describe(s.max_length, s.long_inputs))
    except ScoreplexError as exc:
        _fail(exc)
    header, rows = evaluation_criteria_table(result)
    first, *rest = summary_lines(result)
    _table(f"{suite}: {first}", header, rows)
    for line in rest:
        typer.echo(line)
    rate = result["mean_automation_rate"]
    typer.echo(
        f"deployment criteria (Williamson, Xi & Breyer 2012): {result['items_passing_criteria']} of "
        f"{len(result['tasks'])} tasks pass; automated: mean rate "
        + ("n/a" if rate is None else f"{100 * rate:.1f}%")
        + f"; on {result['items_auto_meeting_human']} of {len(result['tasks'])} tasks the automated responses agree "
        "with the human score at least as well as two humans do on those responses ("
        + f"{result.get('items_auto_meeting_human_all_responses', 0)} against the two humans over all responses)"
    )
    if (line := calibration_line(result)) is not None:
        typer.echo(line)
    if "baselines" in result:
        typer.echo(_baselines_line(result["baselines"]))
    if report:
        write_json_atomic(report, result)
        typer.echo(f"metrics written to {report}")
    if markdown:
        write_criteria_markdown(markdown, result, title=f"Deployment criteria: {suite} on {data}")
        typer.echo(f"criteria report written to {markdown}")


def _mean_qwks(means: dict) -> str:
    """``lexical 0.712, length 0.403`` from ``{name: mean QWK or None}``."""
    return ", ".join(f"{n} {'n/a' if q is None else f'{q:.3f}'}" for n, q in means.items())


def _baselines_line(summary: dict) -> str:
    margin = summary["mean_margin"]
    return (
        f"baselines fitted on {summary['train'] or 'the training file'}: mean QWK {_mean_qwks(summary['mean_qwk'])}; "
        "suite margin over the "
        f"better baseline: mean {'n/a' if margin is None else f'{margin:+.3f}'}, ahead on {summary['tasks_ahead']} "
        f"of {summary['tasks_compared']} tasks"
    )


@app.command()
def baseline(
    train_file: Annotated[Path, typer.Argument(help="Scored responses to fit the baselines on.")],
    test_file: Annotated[Path, typer.Argument(help="Scored responses to evaluate them on.")],
    text_col: TextCol = "text",
    task_col: TaskCol = "task",
    task_id: TaskId = None,
    id_col: IdCol = "id",
    label: LabelOpt = None,
    tasks: TasksOpt = None,
    encoding: EncodingOpt = "utf-8",
    delimiter: DelimiterOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the full metrics as JSON here.")] = None,
) -> None:
    """Fit the simple baselines (lexical TF-IDF + logistic regression, and length-only) per task on TRAIN_FILE and
    evaluate them on TEST_FILE: QWK, accuracy and the other columns of `scoreplex evaluate`, without a suite."""
    from scoreplex.errors import ConfigError, ScoreplexError

    try:
        from scoreplex.baselines import evaluate_baselines
        from scoreplex.data.load import check_nonempty, read_dataset
        from scoreplex.paths import prepare_output_folder
        from scoreplex.reports.evaluation import baseline_table
        from scoreplex.suite import write_json_atomic

        if out is not None:
            if out.is_dir():
                raise ConfigError(f"--out {out} is a folder; give a file path, e.g. {out / 'baselines.json'}.")
            prepare_output_folder(out.parent, output=out)
        cols = _columns(text_col, task_col, task_id, id_col, label, None)
        sep = _delimiter(delimiter)
        train_sets = read_dataset(train_file, columns=cols, tasks_file=tasks, encoding=encoding, delimiter=sep)
        check_nonempty(train_sets, train_file)
        specs = {tid: d.spec for tid, d in train_sets.items()}
        test_sets = read_dataset(test_file, columns=cols, specs=specs, encoding=encoding, delimiter=sep)
        check_nonempty(test_sets, test_file)
        result = evaluate_baselines(train_sets, test_sets)
    except ScoreplexError as exc:
        _fail(exc)
    header, rows = baseline_table(result)
    title = f"baselines fitted on {train_file}, evaluated on {test_file}: mean QWK {_mean_qwks(result['mean_qwk'])}"
    _table(title, header, rows)
    if out:
        write_json_atomic(out, result)
        typer.echo(f"metrics written to {out}")


@app.command()
def calibrate(
    suite: Annotated[Path, typer.Argument(help="Suite folder.")],
    data: Annotated[Path, typer.Argument(help="Held-out scored responses (not the ones the tasks trained on).")],
    text_col: TextCol = "text",
    task_col: TaskCol = "task",
    task_id: TaskId = None,
    id_col: IdCol = "id",
    label: LabelOpt = None,
    second: SecondOpt = None,
    encoding: EncodingOpt = "utf-8",
    backbone: Annotated[str | None, typer.Option(help="Backbone (default: the one the suite was trained on).")] = None,
    route: Annotated[
        bool,
        typer.Option(
            "--route/--no-route",
            help="Fit a routing threshold (responses below it go to a human rater) at the two raters' agreement.",
        ),
    ] = True,
    route_confidence: RouteConfidenceOpt = "quadratic",
    route_rule: RouteRuleOpt = "lowest",
    route_level: RouteLevelOpt = 0.8,
    delimiter: DelimiterOpt = None,
) -> None:
    """Fit each task's decoding on held-out scored responses and store it in the suite.

    Per rubric dimension: a temperature (calibrated probabilities), cut points on the expected score (ordinal) or
    a threshold (binary) where they beat argmax out of fold; per task a routing threshold so that the responses
    scored alone agree with the human score at least as well as a second rater does (the data's second score, or
    the one recorded at training). `train` does this on its validation split already; use `calibrate` for merged
    or distilled suites, or a new validation set.
    """
    from scoreplex.errors import ScoreplexError

    try:
        from scoreplex.data.load import read_dataset
        from scoreplex.decoding import describe_decoding
        from scoreplex.scorer import calibrate_suite
        from scoreplex.suite import Suite

        routing = _route_options(route_confidence, route_rule, route_level, fitted=route, off="--no-route")
        s = Suite.open(suite)
        specs = {tid: s.spec(tid) for tid in s.task_ids}
        cols = _columns(text_col, task_col, task_id, id_col, label, second)
        datasets = read_dataset(data, columns=cols, specs=specs, encoding=encoding, delimiter=_delimiter(delimiter))
        fitted = calibrate_suite(s, datasets, backbone, route=route, routing=routing)
    except ScoreplexError as exc:
        _fail(exc)
    for tid, dec in fitted.items():
        typer.echo(f"{tid}: {describe_decoding(dec)}")
    typer.echo(f"stored the decoding of {len(fitted)} task(s) in {suite}")


@app.command()
def score(
    suite: Annotated[Path, typer.Argument(help="Suite folder.")],
    data: Annotated[Path, typer.Argument(help="Responses to score (CSV, TSV, JSONL or Parquet), any mix of tasks.")],
    output: Annotated[Path, typer.Argument(help="Output file; its extension picks the format.")],
    text_col: TextCol = "text",
    task_col: TaskCol = "task",
    task_id: TaskId = None,
    id_col: IdCol = "id",
    encoding: EncodingOpt = "utf-8",
    backbone: Annotated[str | None, typer.Option(help="Backbone (default: the one the suite was trained on).")] = None,
    chunk_rows: Annotated[
        int, typer.Option("--chunk-rows", help="Rows read, scored and saved at a time (the unit of resuming; >= 1).")
    ] = 1024,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Rows per backbone pass, >= 1 (default: the engine's).")
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard an unfinished earlier run on OUTPUT and start over.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUTPUT.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    delimiter: DelimiterOpt = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Score through a running `scoreplex serve` at this URL (e.g. http://127.0.0.1:8000) instead of "
            "locally. SUITE is still read for the output columns and must be the suite the server serves (same "
            "manifest.json SHA-256, checked on every answer); --backbone and --batch-size are then unused.",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            envvar="SCOREPLEX_KEY",
            help="API key (scorer role) for --url; or set SCOREPLEX_KEY.",
            show_default=False,
        ),
    ] = None,
    ray: Annotated[
        str | None,
        _ray_opt(
            "Score on a Ray cluster with Ray Data: the same output as without --ray, but not resumable (an "
            "interrupted run starts over); the suite must be at the same path on every node."
        ),
    ] = None,
    ray_actors: Annotated[
        int, typer.Option("--ray-actors", help="With --ray: scoring actors, each loads the suite once (>= 1).")
    ] = 1,
    ray_cpus_per_actor: Annotated[
        float,
        typer.Option("--ray-cpus-per-actor", help="With --ray: CPUs each actor reserves (its torch threads)."),
    ] = 1.0,
) -> None:
    """Write predicted scores, class probabilities and a confidence for every response of a file.

    Streams: rows are read, scored and appended chunk by chunk, in input order. Interrupted (Ctrl-C, kill -9)? Run the
    same command again: it resumes after the last saved chunk (progress in OUTPUT.progress.json). With --url, a
    running server scores the rows; the output and resuming are the same. With --ray, actors on a Ray cluster score
    the rows (Ray Data); the output is the same, written at the end.
    """
    from scoreplex.errors import ConfigError, ScoreplexError

    try:
        from scoreplex.streaming import score_file

        scorer = None
        if url is not None:
            try:
                from scoreplex.client import remote_scorer
            except ImportError as exc:
                raise ConfigError(
                    f"--url needs the service extra ({exc.name} is missing): pip install 'scoreplex[service]'."
                ) from None

            def scorer():
                return remote_scorer(url, suite, key)

        cols = _columns(text_col, task_col, task_id, id_col, None, None)
        if ray is not None:
            if url is not None:
                raise ConfigError("--ray and --url are two ways to score; give one of them.")
            from scoreplex.cluster.scoring import RayScoring, score_file_ray

            ray_at = RayScoring(address=ray, actors=ray_actors, cpus_per_actor=ray_cpus_per_actor)
            score_file = partial(score_file_ray, ray=ray_at)  # the same call, scored on Ray
        result = score_file(
            suite,
            data,
            output,
            columns=cols,
            backbone=backbone,
            scorer=scorer,
            encoding=encoding,
            delimiter=_delimiter(delimiter),
            chunk_rows=chunk_rows,
            batch_size=batch_size,
            restart=restart,
            overwrite=overwrite,
            progress=progress,
            log=lambda message: typer.echo(message, err=True),
        )
    except ScoreplexError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        from scoreplex.streaming import progress_path

        if ray is not None:
            typer.echo(f"interrupted: {output} was not written (a --ray run does not resume).", err=True)
        else:
            typer.echo(
                f"interrupted: progress is saved in {progress_path(output)}; run the same command to resume.", err=True
            )
        raise typer.Exit(code=130) from None
    if result.get("truncation") is not None:
        from scoreplex.suite import Suite

        s = Suite.open(suite, verify=False)
        typer.echo(result["truncation"].describe(s.max_length, s.long_inputs), err=True)
    resumed = (
        f"; resumed after {result['resumed_from']} rows, {result['scored']} scored now"
        if result["resumed_from"]
        else ""
    )
    typer.echo(
        f"scored {result['rows']} responses of {result['tasks']} tasks in {result['seconds']:.1f} s "
        f"({result['rows_per_second']:.0f} rows/s once the model was loaded{resumed}) -> {result['output']}"
    )


@app.command()
def methods() -> None:
    """List the training methods: what each stores per task, what its suites can do, its default training settings."""
    from scoreplex.methods import METHODS

    flags = ("trains_per_task", "trains_jointly", "shares_backbone_pass", "exportable_onnx", "mergeable", "adaptable")
    rows = []
    for name, m in METHODS.items():
        caps = ", ".join(f.replace("_", " ") for f in flags if getattr(m.capabilities, f))
        chosen = {**m.training_defaults, **m.settings_defaults}  # e.g. LoRA rank 16 beside its learning rate
        defaults = ", ".join(f"{k} {v}" for k, v in chosen.items() if v is not None)
        rows.append([name, m.description, caps, defaults])
    _table("training methods", ["method", "per task", "capabilities", "training defaults"], rows)


@app.command()
def info(suite: Annotated[Path, typer.Argument(help="Suite folder.")]) -> None:
    """Show a suite's backbone, method, tasks, sizes and validation metrics (verifies every file's hash), and each
    task's decoding: rule and temperature per dimension, a stacked lexical model, the decoded validation QWK and the
    share of validation responses its routing threshold automates."""
    from scoreplex.errors import ScoreplexError
    from scoreplex.suite import Suite

    try:
        s = Suite.open(suite)
    except ScoreplexError as exc:
        _fail(exc)
    m = s.manifest
    try:
        long_inputs = s.long_inputs
    except ScoreplexError as exc:
        _fail(exc)
    typer.echo(
        f"method {m['method']}; backbone {m['backbone'].get('name', '?')} ({m['backbone']['sha256'][:12]}); "
        f"pooling {m['pooling']}; max_length {m['max_length']}; long inputs {long_inputs.describe(s.max_length)}"
    )
    from scoreplex.training.suite import training_truncation

    counts = training_truncation(s)
    if counts is not None:
        typer.echo(f"training data {counts.describe(s.max_length, long_inputs)}")
    rows = []
    for tid in s.task_ids:
        spec = s.spec(tid)
        val = m["tasks"][tid].get("metrics", {}).get("validation", {})
        dims = ", ".join(
            f"{d.name}:{d.kind}/{d.num_classes}" + (f" scale {d.describe_scale()}" if d.scale else "")
            for d in spec.dimensions
        )
        qwk = val.get("qwk")
        try:
            dec, stack = s.decoding(tid), s.lexical(tid)
        except ScoreplexError as exc:
            _fail(exc)
        decoded = dec.fitted.get("decoded", {}).get("qwk")
        rule = ", ".join(f"{d.rule} T={d.temperature:.2f}" for d in dec.dimensions)
        routing = dec.fitted.get("routing", {}).get("automation_rate")
        rows.append(
            [
                tid,
                dims,
                f"{s.task_bytes(tid):,}",
                s.shared_of(tid) or "–",
                "–" if qwk is None else f"{qwk:.3f}",
                rule + (f" + lexical w={stack.weight:g}" if stack is not None else ""),
                "–" if decoded is None else f"{decoded:.3f}",
                "all" if dec.route_threshold is None else "–" if routing is None else f"{routing:.0%}",
            ]
        )
    header = ["task", "dimensions", "own bytes", "shared module", "val QWK", "decoding", "val QWK decoded", "automated"]
    _table(f"{suite}: {len(rows)} tasks, {s.total_bytes:,} bytes", header, rows)


@app.command()
def merge(
    suite: Annotated[Path, typer.Argument(help="Suite of task models to merge (full fine-tunes or LoRA adapters).")],
    data: Annotated[Path, typer.Argument(help="Scored responses of every task: features (and head re-fits) use them.")],
    out: Annotated[Path, typer.Argument(help="New folder for the merged suite (its report goes to OUT/report).")],
    groups: Annotated[int, typer.Option("--groups", "-k", help="T': number of merged models.")] = 3,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="Merge plan JSON {'groups': [[task, ...], ...]} instead of a search.")
    ] = None,
    plan_method: Annotated[
        str, typer.Option(help="'gw' (exact best partition by the similarity) or 'clustering' (average linkage).")
    ] = "gw",
    similarity: Annotated[
        str,
        typer.Option(
            help="Task similarity the plan is searched by: gw (debiased when entropic), gw-debiased, gw-raw, cka "
            "(linear CKA on a shared probe set), task-vector (cosine of weight updates) or text (TF-IDF of prompt "
            "+ rubric)."
        ),
    ] = "gw",
    probe_size: Annotated[int, typer.Option(help="Responses in the shared probe set of --similarity cka.")] = 500,
    balanced: Annotated[
        bool, typer.Option(help="Group sizes floor(T/T')..ceil(T/T'); --no-balanced allows any size.")
    ] = True,
    max_group_size: Annotated[int | None, typer.Option(help="Largest group allowed (e.g. 2 for pairs).")] = None,
    gw: Annotated[str, typer.Option(help="GW solver: 'entropic' (Sinkhorn, the paper's) or 'exact'.")] = "entropic",
    epsilon: Annotated[float, typer.Option(help="Entropic regularisation (costs scaled to [0, 1]).")] = 0.05,
    quantize: Annotated[
        int, typer.Option(help="Summarise each task's features by N k-means centroids weighted by mass (0 = off).")
    ] = 400,
    cap: Annotated[int, typer.Option(help="At most this many responses per task for features (0 = all).")] = 1000,
    layer: Annotated[int, typer.Option(help="Hidden layer for features (-1 = last).")] = -1,
    pooling: Annotated[str, typer.Option(help="Feature pooling: cls, mean or pooler.")] = "cls",
    method: Annotated[str, typer.Option(help="Merge: ties, task_arithmetic or dare_ties.")] = "ties",
    density: Annotated[float, typer.Option(help="Share of each task vector kept (TIES / DARE).")] = 0.2,
    scale: Annotated[float, typer.Option(help="lambda: theta_0 + lambda * merged task vector.")] = 1.0,
    refit: Annotated[bool, typer.Option(help="Re-fit each head on the frozen merged encoder.")] = False,
    per_task: Annotated[
        str,
        typer.Option(
            help="What each task keeps beside its group's merged weights: 'surgery' (a representation surgery "
            "module before its head, fitted on its training responses without their scores; Yang et al. 2024), "
            "'none' (its head only) or 'auto' (surgery, or none with --refit: the best variant on ASAP-SAS)."
        ),
    ] = "auto",
    surgery_rank: Annotated[
        int, typer.Option(help="Rank r of each surgery module (2 x width x r numbers; width: the features heads read).")
    ] = 16,
    lora_rank: Annotated[
        int | None,
        typer.Option(
            help="LoRA suites: rank of each group's merged adapter, factored back by truncated SVD (e.g. 4 or 8 "
            "to make a group's adapter as small as one member's; default: the sum of the members' ranks, up to 64, "
            "which keeps the merge exactly but saves no storage). Full fine-tunes ignore it."
        ),
    ] = None,
    eval_data: Annotated[
        Path | None, typer.Option("--eval", help="Scored responses to compare before/after (e.g. a test file).")
    ] = None,
    text_col: TextCol = "text",
    task_col: TaskCol = "task",
    id_col: IdCol = "id",
    label: LabelOpt = None,
    encoding: EncodingOpt = "utf-8",
    delimiter: DelimiterOpt = None,
    ray: Annotated[
        str | None, _ray_opt("Compute the GW pairs as Ray tasks (the same matrix).", "here, one pair after another")
    ] = None,
) -> None:
    """Merge task models GW-SMM style: features -> Gromov-Wasserstein distances (or another --similarity) -> merge
    plan -> TIES per group. Entropic GW is debiased by default (GW(X,Y) - GW(X,X)/2 - GW(Y,Y)/2); --similarity
    gw-raw gives the earlier raw values.

    Writes a suite that `scoreplex evaluate/score/info` load like any other (one encoder per group, one head per
    task) and OUT/report/{report.json, report.md, gw-heatmap.png, before-after.png}.

    On ASAP-SAS (docs/results/gw-merging.md) --per-task surgery kept the most quality at T' = 3 (LoRA rank 8: 0.710 mean
    test QWK against 0.728 unmerged), and --lora-rank 6 --surgery-rank 8 made it 3x smaller at 0.713.
    """
    from scoreplex.errors import ScoreplexError

    try:
        from scoreplex.data.load import read_dataset
        from scoreplex.merging.features import FeatureSettings
        from scoreplex.merging.gromov import GWSettings
        from scoreplex.merging.gwsmm import MergeJob, run_merge
        from scoreplex.merging.merge import MergeSettings
        from scoreplex.suite import Suite

        s = Suite.open(suite)
        specs = {tid: s.spec(tid) for tid in s.task_ids}
        cols = _columns(text_col, task_col, None, id_col, label, None)
        read = dict(columns=cols, specs=specs, encoding=encoding, delimiter=_delimiter(delimiter))
        datasets = read_dataset(data, **read)
        evals = read_dataset(eval_data, **read) if eval_data else None
        job = MergeJob(
            n_groups=groups,
            plan_method=plan_method,
            similarity=similarity,
            probe_size=probe_size,
            plan_file=str(plan) if plan else None,
            max_size=max_group_size,
            balanced=balanced,
            features=FeatureSettings(layer=layer, pooling=pooling, cap=cap or None),
            gw=GWSettings(method=gw, epsilon=epsilon, quantize=quantize or None),
            merge=MergeSettings(
                method=method,
                density=density,
                scale=scale,
                per_task=("none" if refit else "surgery") if per_task == "auto" else per_task,
                surgery_rank=surgery_rank,
                lora_rank=lora_rank,
            ),
            refit=refit,
        )
        gw_pairs = None
        if ray is not None:
            from scoreplex.cluster.gw import ray_gw_pairs

            gw_pairs = ray_gw_pairs(ray)
        report = run_merge(s, datasets, out, job, eval_data=evals, gw_pairs=gw_pairs)
    except ScoreplexError as exc:
        _fail(exc)
    groups_txt = [[str(i + 1), ", ".join(g)] for i, g in enumerate(report["plan"]["groups"])]
    _table(f"merged {suite} -> {out}", ["group", "tasks"], groups_txt)
    st = report["storage"]
    typer.echo(f"storage {st['before_bytes'] / 1e6:,.1f} MB -> {st['after_bytes'] / 1e6:,.1f} MB ({st['ratio']:.2f}x)")
    if "evaluation" in report:
        ev = report["evaluation"]
        typer.echo(f"mean QWK before {ev['before']['mean_qwk']:.3f}, after {ev['after']['mean_qwk']:.3f}")
    typer.echo(f"report: {out / 'report' / 'report.md'}")


@app.command()
def distill(
    teachers: Annotated[Path, typer.Argument(help="Suite of per-task teacher models (e.g. full fine-tunes).")],
    data: Annotated[Path, typer.Argument(help="Scored responses of the tasks the student learns.")],
    out: Annotated[Path, typer.Argument(help="New folder for the student suite.")],
    layers: Annotated[int, typer.Option(help="Keep the student backbone's first N layers (0 = all).")] = 3,
    student_backbone: BackboneOpt = "minilm",
    experts: Annotated[int, typer.Option(help="Experts per MoE layer.")] = 4,
    moe_layers: Annotated[int, typer.Option(help="MoE layers (0 = plain multi-task student).")] = 2,
    top_k: Annotated[
        int | None, typer.Option(help="Route each row to its top-k experts (default: dense softmax).")
    ] = None,
    kd_weight: Annotated[float, typer.Option(help="Weight of the distillation loss (0 = none).")] = 1.0,
    temperature: Annotated[float, typer.Option(help="Distillation temperature.")] = 3.0,
    balance_weight: Annotated[float, typer.Option(help="Weight of the load-balance loss.")] = 0.01,
    epochs: Annotated[int, typer.Option(help="Training epochs (early stopping on validation mean QWK).")] = 3,
    text_col: TextCol = "text",
    task_col: TaskCol = "task",
    id_col: IdCol = "id",
    label: LabelOpt = None,
    encoding: EncodingOpt = "utf-8",
    delimiter: DelimiterOpt = None,
) -> None:
    """Distil per-task teachers into ONE multi-task mixture-of-experts student (UniMoE-Guided).

    The student (a shared encoder, a gated MoE block, a task embedding + head per task) is a suite that
    `scoreplex evaluate/score` and the inference engine load like any other; `scoreplex adapt` adds tasks to it.
    """
    from dataclasses import replace

    from scoreplex.errors import ScoreplexError

    try:
        from scoreplex.data.load import read_dataset
        from scoreplex.moe.model import MoEConfig
        from scoreplex.moe.runs import STUDENT_CONFIG, run_distill
        from scoreplex.moe.train import StudentObjective
        from scoreplex.suite import Suite

        s = Suite.open(teachers)
        specs = {tid: s.spec(tid) for tid in s.task_ids}
        cols = _columns(text_col, task_col, None, id_col, label, None)
        datasets = read_dataset(data, columns=cols, specs=specs, encoding=encoding, delimiter=_delimiter(delimiter))
        res = run_distill(
            s,
            datasets,
            out,
            student_backbone=student_backbone,
            layers=layers or None,
            moe=MoEConfig(n_layers=moe_layers, n_experts=experts, top_k=top_k),
            objective=StudentObjective(kd_weight=kd_weight, temperature=temperature, balance_weight=balance_weight),
            config=replace(STUDENT_CONFIG, epochs=epochs),
            on_warning=lambda message: typer.echo(f"warning: {message}", err=True),
        )
    except ScoreplexError as exc:
        _fail(exc)
    val = res["validation"]
    rows = [[t, f"{m['qwk']:.3f}"] for t, m in val["tasks"].items()]
    _table(f"student {out}: validation mean QWK {val['mean_qwk']:.3f}", ["task", "QWK"], rows)
    typer.echo(f"student {res['bytes'] / 1e6:,.1f} MB vs teachers {res['teacher_bytes'] / 1e6:,.1f} MB")


@app.command()
def adapt(
    student: Annotated[Path, typer.Argument(help="A student suite made by `scoreplex distill`.")],
    data: Annotated[Path, typer.Argument(help="Scored responses of the NEW tasks.")],
    tasks: TasksOpt = None,
    text_col: TextCol = "text",
    task_col: TaskCol = "task",
    task_id: TaskId = None,
    id_col: IdCol = "id",
    label: LabelOpt = None,
    encoding: EncodingOpt = "utf-8",
    delimiter: DelimiterOpt = None,
) -> None:
    """Add new tasks to a student: only a task embedding and a head are trained and stored per task."""
    from scoreplex.errors import ScoreplexError

    try:
        from scoreplex.data.load import read_dataset
        from scoreplex.moe.runs import run_adapt
        from scoreplex.suite import Suite

        cols = _columns(text_col, task_col, task_id, id_col, label, None)
        datasets = read_dataset(
            data, columns=cols, tasks_file=tasks, encoding=encoding, delimiter=_delimiter(delimiter)
        )
        res = run_adapt(Suite.open(student), datasets)
    except ScoreplexError as exc:
        _fail(exc)
    rows = [
        [t, f"{r['val_metrics']['qwk']:.3f}", f"{r['new_parameters']:,}", f"{r['new_fraction'] * 100:.3f}%"]
        for t, r in res.items()
    ]
    _table(f"added to {student}", ["task", "val QWK", "new parameters", "of the student"], rows)


@app.command("export-onnx")
def export_onnx_cmd(
    suite: Annotated[Path, typer.Argument(help="Suite folder of method lora or head.")],
    out: Annotated[Path, typer.Argument(help="Folder for encoder.onnx, onnx.json and the tokenizer.")],
    quantize: Annotated[
        str | None,
        typer.Option(
            help="'int8': static INT8 (per-channel weights, activation scales calibrated on --calibration; faster on "
            "CPU, and a row's score never depends on its batch). Default: fp32."
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(help="Representative responses (e.g. the training file) to calibrate --quantize int8 on."),
    ] = None,
    lora_targets: Annotated[
        str | None,
        typer.Option(help="Extra layers to give adapter inputs (e.g. query,key,value) for tasks trained later."),
    ] = None,
    text_col: TextCol = "text",
    task_col: TaskCol = "task",
    encoding: EncodingOpt = "utf-8",
    delimiter: DelimiterOpt = None,
) -> None:
    """Export the suite's shared encoder as ONE ONNX graph; per-task adapters are graph inputs, so tasks can be added
    or removed later without re-exporting. Score through it with scoreplex.engine.onnx_runtime.OnnxEngine."""
    from scoreplex.errors import ScoreplexError

    try:
        from scoreplex.data.readers import read_table
        from scoreplex.engine.onnx_export import export_onnx

        targets = [t.strip() for t in lora_targets.split(",") if t.strip()] if lora_targets else None
        texts = None
        if calibration is not None:
            from scoreplex.errors import DataError

            table = read_table(calibration, encoding=encoding, delimiter=_delimiter(delimiter))
            missing = [c for c in (text_col, task_col) if table and c not in table[0]]
            if missing:
                raise DataError(
                    f"the calibration file has no column {missing[0]!r}.",
                    file=str(calibration),
                    fix="name its columns with --text-col and --task-col.",
                )
            texts = [(r[task_col].strip(), r[text_col]) for r in table]
        sidecar = export_onnx(suite, out, quantize=quantize, calibration=texts, lora_targets=targets)
    except ScoreplexError as exc:
        _fail(exc)
    size = sum(f.stat().st_size for f in Path(out).glob("*.onnx"))
    typer.echo(
        f"exported {suite} -> {out} ({quantize or 'fp32'}, {size:,} bytes, "
        f"{len(sidecar.get('lora_layers', []))} adapted layers)"
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo data, suite and scores.")] = Path(
        "build/demo"
    ),
    backbone: BackboneOpt = "minilm",
    epochs: Annotated[int, typer.Option(help="Maximum epochs per task.")] = 4,
) -> None:
    """Generate four demo items (two ordinal, two multi-label), train a LoRA suite, evaluate it, score a file."""
    from scoreplex.errors import ScoreplexError

    try:
        from scoreplex.demo_run import run_demo
        from scoreplex.reports.evaluation import evaluation_table

        report = run_demo(out, backbone=backbone, epochs=epochs, log=typer.echo)
    except ScoreplexError as exc:
        _fail(exc)
    _table(
        f"held-out demo responses: mean QWK {report['mean_qwk']:.3f}",
        ["task", "n", "QWK", "accuracy", "exact match", "human QWK"],
        evaluation_table(report),
    )
    typer.echo(
        f"suite: {report['suite']} ({report['suite_bytes']:,} bytes, trained in {report['train_seconds']:.0f} s);"
        f" scores: {report['scores']}"
    )
    typer.echo("next: scoreplex info " + report["suite"])
    (Path(out) / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


@app.command()
def serve(
    suite: Annotated[Path, typer.Argument(help="Suite folder to serve (lora, head or moe).")],
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1; loopback without keys).")] = (
        None
    ),
    port: Annotated[int | None, typer.Option(help="TCP port (default 8000; 0: any free port).")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone (default: the one the suite was trained on).")] = None,
    max_batch_rows: Annotated[
        int | None, typer.Option("--max-batch-rows", help="Rows of concurrent requests scored together (default 256).")
    ] = None,
    max_wait_ms: Annotated[
        float | None,
        typer.Option(
            "--max-wait-ms",
            help="Under load, how long a batch waits at most for more requests (default 20; it stops 3 ms after the "
            "last arrival; a lone request on an idle server never waits).",
        ),
    ] = None,
    queue_size: Annotated[
        int | None, typer.Option("--queue-size", help="Requests waiting at most; more get 429 (default 256).")
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option("--max-body-bytes", help="Largest request body; more gets 413 (default 4 MiB).")
    ] = None,
    max_upload_bytes: Annotated[
        int | None, typer.Option("--max-upload-bytes", help="Largest module upload (default 256 MiB).")
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", help="Responses per score request; more gets 413 (default 1024).")
    ] = None,
    max_tasks: Annotated[
        int | None, typer.Option("--max-tasks", help="Task modules kept in memory (default: no limit).")
    ] = None,
    keys_file: Annotated[
        Path | None, typer.Option("--keys-file", help="API keys, one 'role:key' a line (roles: scorer, admin).")
    ] = None,
    import_root: Annotated[
        list[Path] | None,
        typer.Option("--import-root", help="Folder whose suites admins may import tasks from by path (repeatable)."),
    ] = None,
    shutdown_timeout_s: Annotated[
        float | None, typer.Option("--shutdown-timeout", help="Seconds queued requests get on SIGTERM (default 30).")
    ] = None,
    keep_alive_s: Annotated[
        float | None,
        typer.Option("--keep-alive", help="Seconds an idle kept-alive connection stays open (default 75)."),
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="Log a line per request (default off: /metrics counts requests by route and status).",
        ),
    ] = None,
    ray: Annotated[str | None, _ray_opt("Serve on Ray Serve, one engine per replica.")] = None,
    replicas: Annotated[int | None, typer.Option("--replicas", help="With --ray: replicas (default 1).")] = None,
    min_replicas: Annotated[
        int | None, typer.Option("--min-replicas", help="With --ray: autoscale from this many replicas.")
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option("--max-replicas", help="With --ray: autoscale up to this many replicas.")
    ] = None,
    target_ongoing_requests: Annotated[
        float | None,
        typer.Option("--target-ongoing-requests", help="With --ray, autoscaling: requests per replica (default 8)."),
    ] = None,
    replica_cpus: Annotated[
        float | None, typer.Option("--replica-cpus", help="With --ray: CPUs per replica (default 1).")
    ] = None,
) -> None:
    """Serve a suite over HTTP: POST /v1/score, /v1/tasks, /healthz, /readyz, /metrics (OpenAPI at /docs).

    Every option can also be set as SCOREPLEX_<OPTION> (e.g. SCOREPLEX_PORT, SCOREPLEX_API_KEYS="admin:KEY,scorer:KEY").
    Without API keys the server binds to loopback only. SIGTERM finishes queued requests, then exits 0.
    With --ray the same app runs as a Ray Serve deployment, one engine per replica; a request whose rows are all
    one task may send the header serve_multiplexed_model_id: TASK to reach a replica that holds it.
    """
    from scoreplex.errors import ConfigError, ScoreplexError

    try:
        from pydantic import ValidationError

        from scoreplex.service import ServiceSettings, settings_error_text
        from scoreplex.service import serve as run_service
    except ImportError as exc:
        _fail(ConfigError(f"the service needs its extra ({exc.name} is missing): pip install 'scoreplex[service]'."))
    given = {
        "host": host,
        "port": port,
        "backbone": backbone,
        "max_batch_rows": max_batch_rows,
        "max_wait_ms": max_wait_ms,
        "queue_size": queue_size,
        "max_body_bytes": max_body_bytes,
        "max_upload_bytes": max_upload_bytes,
        "max_rows": max_rows,
        "max_tasks": max_tasks,
        "keys_file": keys_file,
        "import_roots": tuple(import_root) if import_root else None,
        "shutdown_timeout_s": shutdown_timeout_s,
        "keep_alive_s": keep_alive_s,
        "access_log": access_log,
    }
    try:
        settings = ServiceSettings(suite=suite, **{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        _fail(ConfigError(settings_error_text(exc)))
    scaling_flags = {
        "--replicas": ("replicas", replicas),
        "--min-replicas": ("min_replicas", min_replicas),
        "--max-replicas": ("max_replicas", max_replicas),
        "--target-ongoing-requests": ("target_ongoing_requests", target_ongoing_requests),
        "--replica-cpus": ("cpus_per_replica", replica_cpus),
    }
    scaling = {field: value for field, value in scaling_flags.values() if value is not None}
    if scaling and ray is None:
        given = [flag for flag, (_, value) in scaling_flags.items() if value is not None]
        _fail(ConfigError(f"{', '.join(given)}: only with --ray ADDRESS (Ray Serve); leave them out otherwise."))
    log = lambda message: typer.echo(message, err=True)  # noqa: E731
    try:
        if ray is None:
            run_service(settings, log=log)
        else:
            from scoreplex.cluster.serving import ServeScaling, serve_on_ray

            serve_on_ray(settings, ServeScaling(**scaling), address=ray, log=log)
    except ScoreplexError as exc:
        _fail(exc)


def main() -> None:  # pragma: no cover
    sys.exit(app())
