"""The bad-input corpus: every way a user (or a stranger's suite) can hand the CLI bad input, run through the real
``scoreplex`` commands.

Each case is a row of a table, parametrised by ``(kind, name, command)``:

* ``data``: a damaged response file (or tasks JSON), run through ``train``, ``evaluate`` and ``score`` where the
  damage applies (``score`` reads no scores, so score-only damage is not run through it);
* ``suite``: a copy of a valid tiny suite, damaged as a stranger's (or a broken disk's) suite could be, run through
  ``info``, ``evaluate`` and ``score``;
* ``option``: a bad command-line option or output path.

Every case must end the same way: exit code 2, a message that names where the problem is (file, row, column, task,
field or option: the ``where`` tokens of the case, all of them, each possibly one of several spellings) and says how
to fix it (``Fix:`` or an imperative such as "pass", "use", "re-save", "retrain", "restore", "choose"), and no Python
traceback. The cases are generated here in code; nothing is committed as data.

One tiny LoRA suite (2 tasks, the tiny random BERT) is trained once per session and copied for each suite case.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import shutil
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from scoreplex.backbone import ROOTS_ENV
from scoreplex.cli import app

# --------------------------------------------------------------------------------------------------------------------
# the clean inputs every case starts from
# --------------------------------------------------------------------------------------------------------------------

TASK_IDS = ("q1", "q2")
N_ROWS = 24
BAD = 3
"""Index of the record a row-level case damages: line 5 of a CSV (header on line 1), line 4 of a JSONL file."""
CSV_ROW = f"row {BAD + 2}"
JSONL_ROW = f"row {BAD + 1}"
LONG_TEXT = " ".join(["plants use light energy to turn water and carbon dioxide into sugar"] * 40)
"""Response r0: far more tokens than the tiny BERT's 256 positions (so a suite whose max_length exceeds them bites)."""
HEADER = ["id", "task", "text", "score"]
TRAIN_MAX_LENGTH = 32


def base_rows() -> list[list[str]]:
    rows = []
    for i in range(N_ROWS):
        text = LONG_TEXT if i == 0 else f"answer number {i}: the plant needs light and water to grow"
        rows.append([f"r{i}", TASK_IDS[i % 2], text, str(i % 3)])
    return rows


def csv_text(header: Sequence[str], rows: Sequence[Sequence[str]], delimiter: str = ",") -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def tasks_json(num_classes: int = 3) -> str:
    specs = [{"id": t, "dimensions": [{"name": "score", "num_classes": num_classes}]} for t in TASK_IDS]
    return json.dumps({"tasks": specs}, indent=1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(argv: Sequence[Any], env: dict[str, str] | None = None):
    """Run the CLI in-process; COLUMNS keeps rich from wrapping messages mid-phrase."""
    return CliRunner().invoke(app, [str(a) for a in argv], env={"COLUMNS": "250", **(env or {})})


def flat(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Ctx:
    """The session's clean inputs: the tiny backbone, a trained 2-task LoRA suite, its data and tasks file."""

    backbone: Path
    suite: Path
    data: Path
    tasks: Path


@pytest.fixture(scope="session")
def ctx(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_path: Path) -> Ctx:
    root = tmp_path_factory.mktemp("bad-input-corpus")
    data = root / "clean.csv"
    data.write_text(csv_text(HEADER, base_rows()), encoding="utf-8")
    tasks = root / "tasks.json"
    tasks.write_text(tasks_json(), encoding="utf-8")
    suite = root / "suite"
    argv = ["train", data, "--out", suite, "--backbone", tiny_backbone_path, "--tasks", tasks, "--epochs", 1]
    result = invoke([*argv, "--max-length", TRAIN_MAX_LENGTH, "--batch-size", 16])
    assert result.exit_code == 0, result.output
    return Ctx(tiny_backbone_path, suite, data, tasks)


# --------------------------------------------------------------------------------------------------------------------
# what every case must end with
# --------------------------------------------------------------------------------------------------------------------

FIX = re.compile(
    r"\bFix:|(?:^|[.;:!?(]\s*|,\s*|\b(?:or|and|then)\s+)"
    r"(fix|pass|use|re-?save|retrain|restore|choose|rename|remove|delete|give|write|check|convert|re-?run|train|"
    r"drop|close|quote|shorten|upgrade|add|name|save|fill|correct|load|move|install|set|map|declare|shift)\b",
    re.IGNORECASE,
)
"""A fix: "Fix: ..." or an imperative verb opening a clause ("...; retrain this task", "Pass --backbone")."""
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")

Where = Sequence[str | tuple[str, ...]]
"""Tokens the message must contain, all of them; a tuple is one token written in any of several ways."""


def uncaught(result) -> str:
    """``Type: message at file:line`` of an exception the CLI did not turn into an exit (empty if none)."""
    exc = result.exception
    if exc is None or isinstance(exc, SystemExit):
        return ""
    frames = traceback.extract_tb(result.exc_info[2])
    ours = [f for f in frames if "scoreplex" in f.filename] or frames
    last = ours[-1]
    where = f"{Path(last.filename).name}:{last.lineno} ({last.name})"
    return f"{type(exc).__name__}: {str(exc)[:300]} at {where}"


def command_options(command: str) -> set[str]:
    """Every option name (``--x``, ``--no-x``) the CLI command accepts."""
    import typer.main

    params = typer.main.get_command(app).commands[command].params
    return {"--help"} | {o for p in params for o in (*p.opts, *p.secondary_opts)}


def check_refused(result, where: Where, subs: dict[str, str], command: str) -> None:
    out = flat(result.output)
    problem = uncaught(result)
    assert not problem, f"exit {result.exit_code} with an uncaught exception: {problem}"
    assert "Traceback (most recent call last)" not in result.output, result.output[-2000:]
    assert result.exit_code == 2, f"exit {result.exit_code}, expected 2; output: {out[-800:]}"
    missing = []
    for token in where:
        spellings = (token,) if isinstance(token, str) else token
        spellings = tuple(s.format(**subs) for s in spellings)
        if not any(s in out for s in spellings):
            missing.append(" or ".join(repr(s) for s in spellings))
    assert not missing, f"the message does not name {', '.join(missing)}: {out[-800:]}"
    assert FIX.search(out), f"the message gives no fix: {out[-800:]}"
    unknown = sorted(set(OPTION.findall(out)) - command_options(command))
    assert not unknown, f"the fix names options `scoreplex {command}` does not have: {unknown}: {out[-800:]}"


# --------------------------------------------------------------------------------------------------------------------
# kind "data": damaged response files and tasks files
# --------------------------------------------------------------------------------------------------------------------

Make = Callable[[Path], Path]
"""``make(folder) -> path`` writes a damaged input into ``folder``."""


def csv_with(mutate: Callable[[list[str], list[list[str]]], None] | None = None, name: str = "responses.csv") -> Make:
    """A CSV file of the clean rows after ``mutate(header, rows)``."""

    def make(folder: Path) -> Path:
        header, rows = list(HEADER), base_rows()
        if mutate is not None:
            mutate(header, rows)
        path = folder / name
        path.write_text(csv_text(header, rows), encoding="utf-8")
        return path

    return make


def set_cell(column: str, value: str) -> Callable[[list[str], list[list[str]]], None]:
    def mutate(header: list[str], rows: list[list[str]]) -> None:
        rows[BAD][header.index(column)] = value

    return mutate


def rename_column(old: str, new: str) -> Callable[[list[str], list[list[str]]], None]:
    def mutate(header: list[str], rows: list[list[str]]) -> None:
        header[header.index(old)] = new

    return mutate


def csv_bytes(replace: bytes, name: str = "responses.csv", at_start: bool = False) -> Make:
    """The clean CSV with the text of the damaged row holding ``replace`` (raw bytes; ``at_start``: the text's start,
    where a quote character opens a quoted field)."""

    def make(folder: Path) -> Path:
        rows = base_rows()
        rows[BAD][2] = "MARK the plant makes sugar" if at_start else "the plant MARK makes sugar"
        data = csv_text(HEADER, rows).encode("utf-8").replace(b"MARK", replace)
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def jsonl_records() -> list[dict[str, Any]]:
    return [dict(zip(HEADER, r[:3], strict=False)) | {"score": int(r[3])} for r in base_rows()]


def jsonl_lines(mutate: Callable[[list[str]], None], name: str = "responses.jsonl") -> Make:
    """A JSONL file of the clean records (one JSON text per line) after ``mutate(lines)``."""

    def make(folder: Path) -> Path:
        lines = [json.dumps(r) for r in jsonl_records()]
        mutate(lines)
        path = folder / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return make


def raw_file(content: bytes | str, name: str) -> Make:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    return make


def directory(name: str) -> Make:
    def make(folder: Path) -> Path:
        path = folder / name
        path.mkdir()
        (path / "part-0.csv").write_text(csv_text(HEADER, base_rows()), encoding="utf-8")
        return path

    return make


def missing(name: str) -> Make:
    return lambda folder: folder / name


def header_line(line: str, extra_cell: str | None = None, name: str = "responses.csv") -> Make:
    """A CSV whose header line is ``line``; every record gets an extra trailing cell, filled only on the bad row."""

    def make(folder: Path) -> Path:
        out = [line]
        for i, r in enumerate(base_rows()):
            cells = [*r, (extra_cell if i == BAD else "")] if extra_cell is not None else r
            out.append(csv_text(cells, []).rstrip("\n"))
        path = folder / name
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
        return path

    return make


def garbage(n: int = 4096) -> bytes:
    return random.Random(0).randbytes(n)


def clean_csv(folder: Path) -> Path:
    path = folder / "responses.csv"
    path.write_text(csv_text(HEADER, base_rows()), encoding="utf-8")
    return path


def tasks_raw(content: bytes | str, name: str = "bad-tasks.json") -> Make:
    return raw_file(content, name)


def tasks_obj(obj: Any, name: str = "bad-tasks.json") -> Make:
    return raw_file(json.dumps(obj), name)


def spec(task: str, **dim: Any) -> dict[str, Any]:
    return {"id": task, "dimensions": [{"name": "score", "num_classes": 3, **dim}]}


ALL = ("train", "evaluate", "score")
LABELLED = ("train", "evaluate")
"""Damage to scores: `score` reads no score column."""
OFF_SCALE = ("train",)
"""A number off the task's scale: `evaluate` skips and reports such rows (tests/test_scales.py); `train` refuses."""
FILE = "{file}"
TASKS_FILE = "{tasks}"


@dataclass(frozen=True)
class DataCase:
    name: str
    make: Make
    where: Where
    commands: tuple[str, ...] = ALL
    tasks: Make | None = None
    """A damaged tasks file for train (then the clean data is used); default: the clean tasks file."""
    train_tasks: bool = True
    """Pass --tasks to train (False: train infers the specs from the scores)."""
    args: tuple[str, ...] = ()
    """Extra arguments for every command of the case."""


ROW_TEXT = (FILE, CSV_ROW, "text")

DATA_CASES = [
    # columns
    DataCase("missing_text_column", csv_with(rename_column("text", "answer")), (FILE, "'text'")),
    DataCase("missing_task_column", csv_with(rename_column("task", "item")), (FILE, "'task'")),
    DataCase("missing_score_column", csv_with(rename_column("score", "points")), (FILE, "'score'"), LABELLED),
    DataCase("missing_label_column_named", csv_with(), (FILE, "points"), LABELLED, args=("--label", "score=points")),
    DataCase(
        "missing_id_column_named", csv_with(rename_column("id", "rid")), (FILE, "'uid'"), args=("--id-col", "uid")
    ),
    DataCase("repeated_header_column", header_line("id,task,text,score,text", extra_cell="x"), (FILE, "text")),
    DataCase("unnamed_column_with_data", header_line("id,task,text,score,", extra_cell="stray"), (FILE, CSV_ROW)),
    DataCase("csv_content_in_tsv", csv_with(name="responses.tsv"), (FILE, "text")),
    # texts
    DataCase("empty_text", csv_with(set_cell("text", "")), ROW_TEXT),
    DataCase("whitespace_only_text", csv_with(set_cell("text", "  \t  ")), ROW_TEXT),
    DataCase("zero_width_only_text", csv_with(set_cell("text", "\u200b\u200b")), ROW_TEXT),
    DataCase("bom_and_zero_width_text", csv_with(set_cell("text", "\ufeff\u200d\u2060")), ROW_TEXT),
    DataCase(
        "jsonl_null_text",
        jsonl_lines(lambda ls: ls.__setitem__(BAD, ls[BAD].replace('"text": "', '"text": null, "x": "'))),
        (FILE, JSONL_ROW, "text"),
    ),
    # ids and tasks
    DataCase("duplicate_ids", csv_with(set_cell("id", "r1")), (FILE, CSV_ROW, "r1")),
    DataCase("empty_id", csv_with(set_cell("id", "")), (FILE, CSV_ROW, "id")),
    DataCase("unknown_task", csv_with(set_cell("task", "q9")), (FILE, CSV_ROW, "q9")),
    DataCase("empty_task", csv_with(set_cell("task", "")), (FILE, CSV_ROW, "task")),
    DataCase("task_id_path", csv_with(set_cell("task", "../x")), (FILE, CSV_ROW, "../x"), train_tasks=False),
    # scores
    DataCase("score_out_of_range", csv_with(set_cell("score", "7")), (FILE, CSV_ROW, "score"), OFF_SCALE),
    DataCase("score_negative", csv_with(set_cell("score", "-1")), (FILE, CSV_ROW, "score"), OFF_SCALE),
    DataCase("score_non_numeric", csv_with(set_cell("score", "two")), (FILE, CSV_ROW, "score"), LABELLED),
    DataCase("score_fractional", csv_with(set_cell("score", "1.5")), (FILE, CSV_ROW, "score"), OFF_SCALE),
    DataCase("score_1e20", csv_with(set_cell("score", "1e20")), (FILE, CSV_ROW, "score"), OFF_SCALE),
    DataCase(
        "score_1e20_inferred_range",
        csv_with(set_cell("score", "1e20")),
        (FILE, CSV_ROW, "score"),
        ("train",),
        train_tasks=False,
    ),
    DataCase(
        "score_negative_inferred_range",
        csv_with(set_cell("score", "-1")),
        (FILE, CSV_ROW, "score"),
        ("train",),
        train_tasks=False,
    ),
    DataCase("score_nan", csv_with(set_cell("score", "nan")), (FILE, CSV_ROW, "score"), LABELLED),
    DataCase("score_inf", csv_with(set_cell("score", "inf")), (FILE, CSV_ROW, "score"), LABELLED),
    DataCase("score_empty", csv_with(set_cell("score", "")), (FILE, CSV_ROW, "score"), LABELLED),
    DataCase(
        "jsonl_score_nan",
        jsonl_lines(lambda ls: ls.__setitem__(BAD, ls[BAD].replace('"score": 0', '"score": NaN'))),
        (FILE, JSONL_ROW, "score"),
        LABELLED,
    ),
    DataCase(
        "second_rater_out_of_range",
        csv_with(
            lambda h, rows: (h.append("score2"), [r.append("9" if i == BAD else "1") for i, r in enumerate(rows)])
        ),
        (FILE, CSV_ROW, "score2"),
        OFF_SCALE,
        args=("--second", "score=score2"),
    ),
    # encodings
    DataCase("bad_utf8_bytes", csv_bytes(b"caf\xff\xfe"), (FILE, CSV_ROW)),
    DataCase(
        "cp1252_read_as_utf8", csv_bytes("it\u2019s the sun\u2019s energy".encode("cp1252")), (FILE, CSV_ROW, "cp1252")
    ),
    DataCase(
        "utf16_without_bom",
        raw_file(csv_text(HEADER, base_rows()).encode("utf-16-le"), "responses.csv"),
        (FILE, ("utf-16", "UTF-16")),
    ),
    DataCase("binary_garbage_csv", raw_file(garbage(), "responses.csv"), (FILE,)),
    DataCase("binary_garbage_jsonl", raw_file(garbage(), "responses.jsonl"), (FILE,)),
    # structure
    DataCase(
        "truncated_jsonl_line",
        jsonl_lines(lambda ls: ls.__setitem__(-1, ls[-1][: len(ls[-1]) // 2])),
        (FILE, f"row {N_ROWS}"),
    ),
    DataCase(
        "jsonl_list_instead_of_object",
        jsonl_lines(lambda ls: ls.__setitem__(BAD, json.dumps(["r3", "q2", "text", 0]))),
        (FILE, JSONL_ROW),
    ),
    DataCase("jsonl_whole_file_one_array", raw_file(json.dumps(jsonl_records()), "responses.jsonl"), (FILE, "row 1")),
    DataCase("jsonl_scalar_line", jsonl_lines(lambda ls: ls.__setitem__(BAD, "42")), (FILE, JSONL_ROW)),
    DataCase("ragged_row", csv_bytes(b"sugar, oxygen, and water"), (FILE, CSV_ROW)),
    DataCase("unclosed_quote", csv_bytes(b'"unclosed quote', at_start=True), (FILE, CSV_ROW)),
    DataCase("empty_file_csv", raw_file(b"", "responses.csv"), (FILE,)),
    DataCase("empty_file_jsonl", raw_file(b"", "responses.jsonl"), (FILE,)),
    DataCase("blank_lines_only", raw_file("\n\n \n", "responses.csv"), (FILE,)),
    DataCase("header_only", raw_file("id,task,text,score\n", "responses.csv"), (FILE,)),
    DataCase("parquet_that_is_not_parquet", raw_file(csv_text(HEADER, base_rows()), "responses.parquet"), (FILE,)),
    DataCase("empty_parquet_file", raw_file(b"", "responses.parquet"), (FILE,)),
    # the path itself
    DataCase("directory_instead_of_file", directory("responses.csv"), (FILE,)),
    DataCase("missing_file", missing("no-such-responses.csv"), (FILE,)),
    DataCase("wrong_extension", raw_file(csv_text(HEADER, base_rows()), "responses.xlsx"), (FILE,)),
    DataCase("no_extension", raw_file(csv_text(HEADER, base_rows()), "responses"), (FILE,)),
    # tasks files (train only)
    DataCase("tasks_invalid_json", clean_csv, (TASKS_FILE,), ("train",), tasks=tasks_raw('{"tasks": [')),
    DataCase("tasks_empty_file", clean_csv, (TASKS_FILE,), ("train",), tasks=tasks_raw("")),
    DataCase("tasks_not_utf8", clean_csv, (TASKS_FILE,), ("train",), tasks=tasks_raw(b'{"tasks": [{"id": "q\xe91"}]}')),
    DataCase("tasks_wrong_shape_object", clean_csv, (TASKS_FILE,), ("train",), tasks=tasks_obj({"tasks": {"q1": 3}})),
    DataCase("tasks_list_of_strings", clean_csv, (TASKS_FILE,), ("train",), tasks=tasks_obj(list(TASK_IDS))),
    DataCase("tasks_number", clean_csv, (TASKS_FILE,), ("train",), tasks=tasks_obj(3)),
    DataCase("tasks_missing_id", clean_csv, (TASKS_FILE, "id"), ("train",), tasks=tasks_obj([{"dimensions": []}])),
    DataCase(
        "tasks_dimensions_not_list",
        clean_csv,
        (TASKS_FILE, "dimensions"),
        ("train",),
        tasks=tasks_obj([{"id": "q1", "dimensions": "score"}, spec("q2")]),
    ),
    DataCase(
        "tasks_num_classes_zero",
        clean_csv,
        (TASKS_FILE, "num_classes"),
        ("train",),
        tasks=tasks_obj([spec("q1", num_classes=0), spec("q2")]),
    ),
    DataCase(
        "tasks_num_classes_string",
        clean_csv,
        (TASKS_FILE, "num_classes"),
        ("train",),
        tasks=tasks_obj([spec("q1", num_classes="three"), spec("q2")]),
    ),
    DataCase(
        "tasks_unknown_kind",
        clean_csv,
        (TASKS_FILE, "kind"),
        ("train",),
        tasks=tasks_obj([spec("q1", kind="nominal"), spec("q2")]),
    ),
    DataCase("tasks_bad_id", clean_csv, (TASKS_FILE, "../x"), ("train",), tasks=tasks_obj([spec("../x"), spec("q2")])),
    DataCase(
        "tasks_duplicate_ids", clean_csv, (TASKS_FILE, "q1"), ("train",), tasks=tasks_obj([spec("q1"), spec("q1")])
    ),
    DataCase("tasks_missing_file", clean_csv, (TASKS_FILE,), ("train",), tasks=missing("no-such-tasks.json")),
    DataCase(
        "tasks_is_directory",
        clean_csv,
        (TASKS_FILE,),
        ("train",),
        tasks=lambda f: (f / "tasks.d").mkdir() or f / "tasks.d",
    ),
]


def data_argv(case: DataCase, command: str, folder: Path, ctx: Ctx) -> tuple[list[Any], dict[str, str]]:
    data = ctx.data if case.tasks is not None else case.make(folder)
    subs = {"file": data.name}
    if command == "train":
        tasks = ctx.tasks
        if case.tasks is not None:
            tasks = case.tasks(folder)
            subs["tasks"] = tasks.name
        argv = ["train", data, "--out", folder / "new-suite", "--backbone", ctx.backbone, "--epochs", 1]
        argv += ["--max-length", TRAIN_MAX_LENGTH, "--batch-size", 16, *case.args]
        if case.train_tasks:
            argv += ["--tasks", tasks]
    elif command == "evaluate":
        argv = ["evaluate", ctx.suite, data, *case.args]
    else:
        argv = ["score", ctx.suite, data, folder / "scores.csv", "--no-progress", *case.args]
    return argv, subs


# --------------------------------------------------------------------------------------------------------------------
# kind "suite": a valid tiny suite, copied and damaged
# --------------------------------------------------------------------------------------------------------------------


def manifest_path(suite: Path) -> Path:
    return suite / "manifest.json"


def edit_manifest(suite: Path, change: Callable[[dict[str, Any]], Any], *, replace: bool = False) -> None:
    """Apply ``change`` to the manifest in place (``replace``: write what it returns instead)."""
    m = json.loads(manifest_path(suite).read_text(encoding="utf-8"))
    new = change(m)
    manifest_path(suite).write_text(json.dumps(new if replace else m, indent=1), encoding="utf-8")


def write_task_file(suite: Path, task: str, name: str, data: bytes) -> None:
    """Replace a task's file and record its new SHA-256, so the hash check passes and the content is what is bad."""
    path = suite / "tasks" / task / name
    path.write_bytes(data)
    edit_manifest(suite, lambda m: m["tasks"][task]["files"].__setitem__(name, sha256(path)))


def task_json(suite: Path, task: str = "q1") -> dict[str, Any]:
    return json.loads((suite / "tasks" / task / "task.json").read_text(encoding="utf-8"))


def with_task_json(
    change: Callable[[dict[str, Any]], Any], *, replace: bool = False
) -> Callable[[Path, Path, Ctx], None]:
    """Apply ``change`` to task q1's task.json in place (``replace``: write what it returns instead)."""

    def damage(suite: Path, folder: Path, ctx: Ctx) -> None:
        info = task_json(suite)
        new = change(info)
        write_task_file(suite, "q1", "task.json", json.dumps(new if replace else info).encode("utf-8"))

    return damage


def manifest(change: Callable[[dict[str, Any]], Any], *, replace: bool = False) -> Callable[[Path, Path, Ctx], None]:
    return lambda suite, folder, ctx: edit_manifest(suite, change, replace=replace)


def manifest_bytes(data: bytes) -> Callable[[Path, Path, Ctx], None]:
    return lambda suite, folder, ctx: manifest_path(suite).write_bytes(data)


def rename_task(new: str) -> Callable[[Path, Path, Ctx], None]:
    def change(m: dict[str, Any]) -> None:
        m["tasks"] = {(new if k == "q1" else k): v for k, v in m["tasks"].items()}

    return manifest(change)


def module_tensors(suite: Path, task: str = "q1") -> dict:
    from safetensors.torch import load_file

    return load_file(str(suite / "tasks" / task / "module.safetensors"))


def module_bytes_of(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def damage_module_random(suite: Path, folder: Path, ctx: Ctx) -> None:
    write_task_file(suite, "q1", "module.safetensors", garbage(2048))


def damage_module_empty(suite: Path, folder: Path, ctx: Ctx) -> None:
    import torch

    write_task_file(suite, "q1", "module.safetensors", module_bytes_of({"unused": torch.zeros(1)}))


def damage_module_shapes(suite: Path, folder: Path, ctx: Ctx) -> None:
    import torch

    tensors = {k: torch.zeros(*(s + 3 for s in v.shape)) for k, v in module_tensors(suite).items()}
    write_task_file(suite, "q1", "module.safetensors", module_bytes_of(tensors))


def damage_module_flip(suite: Path, folder: Path, ctx: Ctx) -> None:
    path = suite / "tasks" / "q1" / "module.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_task_json_edited(suite: Path, folder: Path, ctx: Ctx) -> None:
    path = suite / "tasks" / "q1" / "task.json"
    path.write_text(path.read_text(encoding="utf-8") + "\n", encoding="utf-8")


def damage_delete_task(suite: Path, folder: Path, ctx: Ctx) -> None:
    shutil.rmtree(suite / "tasks" / "q1")


def damage_symlink_task(suite: Path, folder: Path, ctx: Ctx) -> None:
    outside = folder / "elsewhere-q1"
    shutil.move(suite / "tasks" / "q1", outside)
    (suite / "tasks" / "q1").symlink_to(outside, target_is_directory=True)


def damage_shared_outside(suite: Path, folder: Path, ctx: Ctx) -> None:
    outside = folder / "outside.safetensors"
    shutil.copy(suite / "tasks" / "q1" / "module.safetensors", outside)

    def change(m: dict[str, Any]) -> None:
        m["shared"] = {"g0": {"file": "../outside.safetensors", "sha256": sha256(outside), "bytes": 1}}
        m["tasks"]["q1"]["shared"] = "g0"

    edit_manifest(suite, change)


def damage_shared_name(suite: Path, folder: Path, ctx: Ctx) -> None:
    def change(m: dict[str, Any]) -> None:
        m["shared"] = {"../x": {"file": "shared/../x.safetensors", "sha256": "0" * 64, "bytes": 1}}
        m["tasks"]["q1"]["shared"] = "../x"

    edit_manifest(suite, change)


def damage_backbone_missing(suite: Path, folder: Path, ctx: Ctx) -> None:
    gone = folder / "gone-backbone"
    edit_manifest(suite, lambda m: m["backbone"].update(path=str(gone), name=str(gone)))


def damage_suite_is_file(suite: Path, folder: Path, ctx: Ctx) -> None:
    shutil.rmtree(suite)
    suite.write_text("not a folder\n", encoding="utf-8")


def damage_no_manifest(suite: Path, folder: Path, ctx: Ctx) -> None:
    manifest_path(suite).unlink()


def no_damage(suite: Path, folder: Path, ctx: Ctx) -> None:
    pass


SUITE_COMMANDS = ("info", "evaluate", "score")
LOADING = ("evaluate", "score")
"""Damage only a command that loads the backbone can see (`info` reads no backbone)."""
SUITE = "{suite}"
Q1 = ("'q1'", '"q1"', "tasks/q1")


@dataclass(frozen=True)
class SuiteCase:
    name: str
    damage: Callable[[Path, Path, Ctx], None]
    where: Where
    commands: tuple[str, ...] = SUITE_COMMANDS
    env: dict[str, str] = field(default_factory=dict)
    """Environment for the CLI; ``{untrusted}`` is replaced by a folder that trusts nothing."""


def untrusted_roots(suite: Path, folder: Path, ctx: Ctx) -> None:
    pass  # the environment does it: ROOTS_ENV names an empty folder, and the backbone is not under the suite's parent


SUITE_CASES = [
    SuiteCase("manifest_invalid_json", manifest_bytes(b'{"format": "scoreplex-suite", "tasks": {'), (SUITE,)),
    SuiteCase("manifest_empty", manifest_bytes(b""), (SUITE,)),
    SuiteCase("manifest_not_utf8", manifest_bytes(b'{"format": "scoreplex-suite\xff"}'), (SUITE,)),
    SuiteCase("manifest_a_list", manifest(lambda m: [m], replace=True), (SUITE,)),
    SuiteCase("manifest_missing", damage_no_manifest, (SUITE,)),
    SuiteCase("manifest_other_format", manifest(lambda m: m.update(format="something-else")), (SUITE, "format")),
    SuiteCase("manifest_future_version", manifest(lambda m: m.update(format_version=99)), (SUITE,)),
    SuiteCase("missing_tasks", manifest(lambda m: m.pop("tasks")), (SUITE, "tasks")),
    SuiteCase("tasks_a_list", manifest(lambda m: m.update(tasks=list(m["tasks"]))), (SUITE, "tasks")),
    SuiteCase("tasks_empty", manifest(lambda m: m.update(tasks={})), (SUITE,), LOADING),
    SuiteCase("task_entry_not_object", manifest(lambda m: m["tasks"].update(q1="module.safetensors")), (SUITE, Q1)),
    SuiteCase(
        "task_files_incomplete",
        manifest(lambda m: m["tasks"]["q1"]["files"].pop("task.json")),
        (SUITE, Q1, "task.json"),
    ),
    SuiteCase("task_id_dotdot", rename_task("../../x"), (SUITE, "../../x")),
    SuiteCase("task_id_absolute", rename_task("/etc"), (SUITE, "/etc")),
    SuiteCase("task_id_slash", rename_task("a/b"), (SUITE, "a/b")),
    SuiteCase("shared_name_dotdot", damage_shared_name, (SUITE, "../x")),
    SuiteCase("shared_file_outside", damage_shared_outside, (SUITE, ("g0", "outside"))),
    SuiteCase("task_folder_symlink_outside", damage_symlink_task, (SUITE, "q1")),
    SuiteCase(
        "task_json_invalid", lambda s, f, c: write_task_file(s, "q1", "task.json", b'{"spec": '), (Q1, "task.json")
    ),
    SuiteCase(
        "task_json_not_utf8",
        lambda s, f, c: write_task_file(s, "q1", "task.json", b'{"spec\xff": 1}'),
        (Q1, "task.json"),
    ),
    SuiteCase("task_json_a_list", with_task_json(lambda info: [info], replace=True), (Q1, "task.json")),
    SuiteCase("task_json_spec_missing", with_task_json(lambda info: info.pop("spec")), (Q1, "task.json", "spec")),
    SuiteCase(
        "task_json_spec_invalid",
        with_task_json(lambda info: info["spec"]["dimensions"][0].update(num_classes=0)),
        (Q1, "task.json"),
    ),
    SuiteCase(
        "task_json_spec_other_task", with_task_json(lambda info: info["spec"].update(id="q2")), (Q1, "task.json")
    ),
    SuiteCase("task_json_config_not_object", with_task_json(lambda info: info.update(config=[1])), (Q1, "config")),
    SuiteCase("task_json_hash_mismatch", damage_task_json_edited, (Q1, "task.json")),
    SuiteCase("module_not_safetensors", damage_module_random, (Q1,)),
    SuiteCase("module_without_its_tensors", damage_module_empty, (Q1,), LOADING),
    SuiteCase("module_wrong_shapes", damage_module_shapes, (Q1,), LOADING),
    SuiteCase("module_hash_mismatch", damage_module_flip, (Q1, "module.safetensors")),
    SuiteCase("task_folder_deleted", damage_delete_task, (Q1,)),
    SuiteCase("max_length_string", manifest(lambda m: m.update(max_length="32")), (SUITE, "max_length")),
    SuiteCase("max_length_negative", manifest(lambda m: m.update(max_length=-5)), (SUITE, "max_length")),
    SuiteCase("max_length_zero", manifest(lambda m: m.update(max_length=0)), (SUITE, "max_length")),
    SuiteCase("max_length_huge", manifest(lambda m: m.update(max_length=10**12)), (SUITE, "max_length")),
    SuiteCase(
        "max_length_beyond_positions", manifest(lambda m: m.update(max_length=4096)), (SUITE, "max_length"), LOADING
    ),
    SuiteCase("method_unknown", manifest(lambda m: m.update(method="qlora")), (SUITE, "qlora")),
    SuiteCase("method_not_string", manifest(lambda m: m.update(method=["lora"])), (SUITE, "method")),
    SuiteCase("pooling_unknown", manifest(lambda m: m.update(pooling="median")), (SUITE, "median")),
    SuiteCase("backbone_not_object", manifest(lambda m: m.update(backbone="minilm")), (SUITE, "backbone")),
    SuiteCase("backbone_without_sha", manifest(lambda m: m["backbone"].pop("sha256")), (SUITE, "backbone")),
    SuiteCase(
        "backbone_outside_trusted_roots",
        untrusted_roots,
        ("--backbone",),
        LOADING,
        env={ROOTS_ENV: "{untrusted}"},
    ),
    SuiteCase(
        "backbone_sha_mismatch",
        manifest(lambda m: m["backbone"].update(sha256="0" * 64)),
        (SUITE, ("000000000000", "sha256")),
        LOADING,
    ),
    SuiteCase("backbone_path_missing", damage_backbone_missing, ("gone-backbone",), LOADING),
    SuiteCase("suite_is_a_file", damage_suite_is_file, (SUITE,)),
]


def suite_argv(case: SuiteCase, command: str, folder: Path, ctx: Ctx) -> tuple[list[Any], dict[str, str]]:
    suite = folder / "suite"
    shutil.copytree(ctx.suite, suite)
    case.damage(suite, folder, ctx)
    subs = {"suite": str(suite)}
    if command == "info":
        return ["info", suite], subs
    if command == "evaluate":
        return ["evaluate", suite, ctx.data], subs
    return ["score", suite, ctx.data, folder / "scores.csv", "--no-progress"], subs


# --------------------------------------------------------------------------------------------------------------------
# kind "option": bad options and output paths
# --------------------------------------------------------------------------------------------------------------------


def train_argv(folder: Path, ctx: Ctx, *extra: Any, data: Path | None = None) -> list[Any]:
    argv = ["train", data or ctx.data, "--out", folder / "new-suite", "--backbone", ctx.backbone, "--tasks", ctx.tasks]
    return [*argv, "--epochs", 1, "--max-length", TRAIN_MAX_LENGTH, "--batch-size", 16, *extra]


def train_with(*extra: Any) -> Callable[[Path, Ctx], list[Any]]:
    """Train with ``extra`` options (a later option overrides the defaults above)."""
    return lambda folder, ctx: train_argv(folder, ctx, *extra)


def score_argv(folder: Path, ctx: Ctx, output: Path | None = None, *extra: Any) -> list[Any]:
    return ["score", ctx.suite, ctx.data, output or folder / "scores.csv", "--no-progress", *extra]


def score_with(*extra: Any) -> Callable[[Path, Ctx], list[Any]]:
    return lambda folder, ctx: score_argv(folder, ctx, None, *extra)


def a_file(folder: Path, name: str = "existing.txt", content: str = "keep me\n") -> Path:
    path = folder / name
    path.write_text(content, encoding="utf-8")
    return path


def merge_with(*extra: Any) -> Callable[[Path, Ctx], list[Any]]:
    """Merge with ``extra`` options, with the exact GW solver unless they name one: on two tiny tasks it takes
    milliseconds where the entropic one takes seconds (a case that the library validates late pays for it)."""
    solver = [] if "--gw" in extra or "--epsilon" in extra else ["--gw", "exact"]
    return lambda folder, ctx: ["merge", ctx.suite, ctx.data, folder / "merged", *solver, *extra]


def distill_with(*extra: Any) -> Callable[[Path, Ctx], list[Any]]:
    def argv(folder: Path, ctx: Ctx) -> list[Any]:
        return ["distill", ctx.suite, ctx.data, folder / "student", "--backbone", ctx.backbone, "--epochs", 1]

    return lambda folder, ctx: [*argv(folder, ctx), *extra]


def export_with(*extra: Any) -> Callable[[Path, Ctx], list[Any]]:
    return lambda folder, ctx: ["export-onnx", ctx.suite, folder / "onnx", *extra]


def score_output_under_file(folder: Path, ctx: Ctx) -> list[Any]:
    return score_argv(folder, ctx, a_file(folder) / "scores.csv")


def score_output_is_input(folder: Path, ctx: Ctx) -> list[Any]:
    data = folder / "responses.csv"
    shutil.copy(ctx.data, data)
    return ["score", ctx.suite, data, data, "--no-progress"]


def score_output_exists(folder: Path, ctx: Ctx) -> list[Any]:
    return score_argv(folder, ctx, a_file(folder, "scores.csv", "id,task\nold,q1\n"))


def score_output_is_directory(folder: Path, ctx: Ctx) -> list[Any]:
    out = folder / "scores.csv"
    out.mkdir()
    return score_argv(folder, ctx, out)


def train_out_is_file(folder: Path, ctx: Ctx) -> list[Any]:
    argv = train_argv(folder, ctx)
    argv[argv.index("--out") + 1] = a_file(folder)
    return argv


def train_out_under_file(folder: Path, ctx: Ctx) -> list[Any]:
    argv = train_argv(folder, ctx)
    argv[argv.index("--out") + 1] = a_file(folder) / "suite"
    return argv


def train_out_is_input(folder: Path, ctx: Ctx) -> list[Any]:
    data = folder / "responses.csv"
    shutil.copy(ctx.data, data)
    argv = train_argv(folder, ctx, data=data)
    argv[argv.index("--out") + 1] = data
    return argv


def train_backbone_is_file(folder: Path, ctx: Ctx) -> list[Any]:
    return train_argv(folder, ctx, "--backbone", a_file(folder, "model.bin"))


def evaluate_report_under_file(folder: Path, ctx: Ctx) -> list[Any]:
    return ["evaluate", ctx.suite, ctx.data, "--report", a_file(folder) / "report.json"]


def evaluate_report_is_directory(folder: Path, ctx: Ctx) -> list[Any]:
    report = folder / "report.json"
    report.mkdir()
    return ["evaluate", ctx.suite, ctx.data, "--report", report]


def evaluate_backbone_empty_folder(folder: Path, ctx: Ctx) -> list[Any]:
    empty = folder / "empty-backbone"
    empty.mkdir()
    return ["evaluate", ctx.suite, ctx.data, "--backbone", empty]


def merge_plan_missing(folder: Path, ctx: Ctx) -> list[Any]:
    return merge_with("--plan", folder / "no-such-plan.json")(folder, ctx)


def merge_plan_unknown_task(folder: Path, ctx: Ctx) -> list[Any]:
    plan = folder / "plan.json"
    plan.write_text(json.dumps({"name": "p", "groups": [["q1", "q9"], ["q2"]]}), encoding="utf-8")
    return merge_with("--plan", plan)(folder, ctx)


def merge_out_is_file(folder: Path, ctx: Ctx) -> list[Any]:
    argv = merge_with("--groups", 1)(folder, ctx)
    argv[3] = a_file(folder)  # OUT
    return argv


def export_out_is_file(folder: Path, ctx: Ctx) -> list[Any]:
    return ["export-onnx", ctx.suite, a_file(folder)]


def adapt_not_a_student(folder: Path, ctx: Ctx) -> list[Any]:
    return ["adapt", ctx.suite, ctx.data, "--tasks", ctx.tasks]


def unchanged(name: str, content: str | None = None) -> Callable[[Path, Ctx], None]:
    """A check after the run: ``folder/name`` still holds ``content`` (default: the clean data)."""

    def check(folder: Path, ctx: Ctx) -> None:
        want = ctx.data.read_text(encoding="utf-8") if content is None else content
        assert (folder / name).read_text(encoding="utf-8") == want, f"{name} was overwritten"

    return check


@dataclass(frozen=True)
class OptionCase:
    name: str
    argv: Callable[[Path, Ctx], list[Any]]
    where: Where
    after: Callable[[Path, Ctx], None] | None = None


def opt(name: str) -> tuple[str, ...]:
    """An option named as ``--max-length`` or ``max_length``."""
    return (f"--{name}", name.replace("-", "_"))


OPTION_CASES = [
    # train
    OptionCase("train_max_length_beyond_positions", train_with("--max-length", 1000), (opt("max-length"),)),
    OptionCase("train_max_length_zero", train_with("--max-length", 0), (opt("max-length"),)),
    OptionCase("train_epochs_zero", train_with("--epochs", 0), (opt("epochs"),)),
    OptionCase("train_epochs_negative", train_with("--epochs", -2), (opt("epochs"),)),
    OptionCase("train_val_fraction_1_5", train_with("--val-fraction", 1.5), (opt("val-fraction"),)),
    OptionCase("train_val_fraction_negative", train_with("--val-fraction", -0.1), (opt("val-fraction"),)),
    OptionCase("train_method_unknown", train_with("--method", "qlora"), ("qlora",)),
    OptionCase("train_pooling_unknown", train_with("--pooling", "median"), ("median",)),
    OptionCase("train_batch_size_zero", train_with("--batch-size", 0), (opt("batch-size"),)),
    OptionCase("train_lr_negative", train_with("--lr", -1), (opt("lr"),)),
    OptionCase("train_lr_nan", train_with("--lr", "nan"), (opt("lr"),)),
    OptionCase("train_patience_negative", train_with("--patience", -1), (opt("patience"),)),
    OptionCase("train_head_warmup_negative", train_with("--head-warmup-epochs", -1), (opt("head-warmup-epochs"),)),
    OptionCase("train_lora_r_zero", train_with("--lora-r", 0), (opt("lora-r"),)),
    OptionCase("train_lora_alpha_zero", train_with("--lora-alpha", 0), (opt("lora-alpha"),)),
    OptionCase("train_lora_targets_unknown", train_with("--lora-targets", "no_such_layer"), ("no_such_layer",)),
    OptionCase("train_encoding_unknown", train_with("--encoding", "no-such-codec"), ("no-such-codec",)),
    OptionCase("train_task_id_invalid", train_with("--task-id", "../x"), ("../x",)),
    OptionCase("train_label_syntax", train_with("--label", "=score"), (opt("label"),)),
    OptionCase(
        "train_label_same_column_twice", train_with("--label", "score=score", "--second", "score=score"), ("score",)
    ),
    OptionCase("train_out_is_file", train_out_is_file, ("existing.txt",), unchanged("existing.txt", "keep me\n")),
    OptionCase("train_out_under_file", train_out_under_file, ("existing.txt",)),
    OptionCase("train_out_equals_input", train_out_is_input, ("responses.csv",), unchanged("responses.csv")),
    OptionCase("train_backbone_is_a_file", train_backbone_is_file, ("model.bin",)),
    # evaluate
    OptionCase("evaluate_report_under_file", evaluate_report_under_file, ("existing.txt",)),
    OptionCase("evaluate_report_is_directory", evaluate_report_is_directory, ("report.json",)),
    OptionCase("evaluate_backbone_empty_folder", evaluate_backbone_empty_folder, ("empty-backbone",)),
    OptionCase("evaluate_task_id_invalid", lambda f, c: ["evaluate", c.suite, c.data, "--task-id", "../x"], ("../x",)),
    # score
    OptionCase("score_chunk_rows_zero", score_with("--chunk-rows", 0), (opt("chunk-rows"),)),
    OptionCase("score_batch_size_zero", score_with("--batch-size", 0), (opt("batch-size"),)),
    OptionCase("score_output_under_file", score_output_under_file, ("existing.txt",)),
    OptionCase("score_output_equals_input", score_output_is_input, ("responses.csv",), unchanged("responses.csv")),
    OptionCase(
        "score_output_exists_without_overwrite",
        score_output_exists,
        ("scores.csv", "--overwrite"),
        unchanged("scores.csv", "id,task\nold,q1\n"),
    ),
    OptionCase("score_output_is_directory", score_output_is_directory, ("scores.csv",)),
    OptionCase("score_output_unknown_extension", lambda f, c: score_argv(f, c, f / "scores.xlsx"), ("scores.xlsx",)),
    OptionCase("score_backbone_missing", score_with("--backbone", "/nonexistent/backbone"), ("/nonexistent/backbone",)),
    OptionCase("score_encoding_unknown", score_with("--encoding", "no-such-codec"), ("no-such-codec",)),
    # export-onnx
    OptionCase("export_quantize_unknown", export_with("--quantize", "int4"), ("int4",)),
    OptionCase("export_lora_targets_unknown", export_with("--lora-targets", "no_such_layer"), ("no_such_layer",)),
    OptionCase("export_out_is_file", export_out_is_file, ("existing.txt",)),
    # merge
    OptionCase("merge_groups_zero", merge_with("--groups", 0), (opt("groups"),)),
    OptionCase("merge_groups_negative", merge_with("--groups", -1), (opt("groups"),)),
    OptionCase("merge_groups_more_than_tasks", merge_with("--groups", 5), (opt("groups"),)),
    OptionCase("merge_density_above_one", merge_with("--groups", 1, "--density", 1.5), (opt("density"),)),
    OptionCase("merge_method_unknown", merge_with("--groups", 1, "--method", "average"), ("average",)),
    OptionCase("merge_plan_method_unknown", merge_with("--plan-method", "kmeans"), ("kmeans",)),
    OptionCase("merge_gw_solver_unknown", merge_with("--gw", "sinkhorn2"), ("sinkhorn2",)),
    OptionCase("merge_epsilon_zero", merge_with("--groups", 1, "--epsilon", 0), (opt("epsilon"),)),
    OptionCase("merge_pooling_unknown", merge_with("--groups", 1, "--pooling", "median"), ("median",)),
    OptionCase("merge_plan_missing", merge_plan_missing, ("no-such-plan.json",)),
    OptionCase("merge_plan_unknown_task", merge_plan_unknown_task, ("plan.json", "q9")),
    OptionCase("merge_out_is_file", merge_out_is_file, ("existing.txt",)),
    # distill / adapt
    OptionCase("distill_layers_negative", distill_with("--layers", -1), (opt("layers"),)),
    OptionCase("distill_experts_zero", distill_with("--experts", 0), (opt("experts"),)),
    OptionCase("distill_top_k_above_experts", distill_with("--experts", 2, "--top-k", 5), (opt("top-k"),)),
    OptionCase("distill_temperature_zero", distill_with("--temperature", 0), (opt("temperature"),)),
    OptionCase("adapt_not_a_student", adapt_not_a_student, ("{suite}",)),
]


# --------------------------------------------------------------------------------------------------------------------
# the table and the one test
# --------------------------------------------------------------------------------------------------------------------

CASES: dict[tuple[str, str], Any] = {}
for _kind, _cases in (("data", DATA_CASES), ("suite", SUITE_CASES), ("option", OPTION_CASES)):
    for _case in _cases:
        assert (_kind, _case.name) not in CASES, f"two {_kind} cases named {_case.name}"
        CASES[_kind, _case.name] = _case


def _params() -> list:
    params = []
    for (kind, name), case in CASES.items():
        commands = case.commands if kind != "option" else (None,)
        for command in commands:
            label = f"{kind}-{name}" + (f"-{command}" if command else "")
            params.append(pytest.param(kind, name, command, id=label))
    return params


def test_corpus_is_large_enough():
    assert len(CASES) >= 100
    assert len(_params()) >= 200


@pytest.mark.parametrize(("kind", "name", "command"), _params())
def test_bad_input_is_refused_with_where_and_a_fix(kind: str, name: str, command: str | None, ctx: Ctx, tmp_path):
    case = CASES[kind, name]
    env: dict[str, str] = {}
    if kind == "data":
        argv, subs = data_argv(case, command, tmp_path, ctx)
    elif kind == "suite":
        argv, subs = suite_argv(case, command, tmp_path, ctx)
        untrusted = tmp_path / "trusts-nothing"
        untrusted.mkdir()
        env = {k: v.format(untrusted=untrusted) for k, v in case.env.items()}
    else:
        argv = case.argv(tmp_path, ctx)
        subs = {"suite": str(ctx.suite)}
    result = invoke(argv, env)
    check_refused(result, case.where, subs, str(argv[0]))
    if kind == "option" and case.after is not None:
        case.after(tmp_path, ctx)
