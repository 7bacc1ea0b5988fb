"""Streaming, resumable batch scoring (scoreplex.streaming) and the incremental reader behind it (iter_table).

A small LoRA suite of the four demo tasks on the tiny BERT scores a shuffled file that mixes them. Invariants: the
stream equals SuiteScorer row for row; the chunk size does not change the file; an interrupted run (Ctrl-C injected
between chunks, a torn last write, a real ``kill -9``) re-run gives the file of an uninterrupted run.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scoreplex import streaming
from scoreplex.cli import app
from scoreplex.data.readers import ColumnMap, iter_table, read_table, write_table
from scoreplex.errors import ConfigError, DataError, ScoreplexError
from scoreplex.methods import MethodSettings
from scoreplex.scorer import SuiteScorer
from scoreplex.streaming import (
    ResumeError,
    StreamOptions,
    estimate_rows,
    output_columns,
    progress_path,
    read_progress,
    score_file,
    staging_path,
)
from scoreplex.suite import Suite
from scoreplex.training import TrainConfig
from scoreplex.training.suite import TrainOptions, train_suite

CONFIG = TrainConfig(epochs=1, lr=1e-2, batch_size=16, patience=0, head_warmup_epochs=0)
"""One epoch at a large rate, so the LoRA updates are far from zero and every task scores differently."""
CHUNK = 16
N_ROWS = 240  # conftest.N_DEMO responses of each of the four demo tasks


# -- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    root = tmp_path_factory.mktemp("stream") / "lora"
    options = TrainOptions(
        method="lora",
        backbone=str(tiny_backbone_path),
        config=CONFIG,
        settings=MethodSettings(lora_r=4, lora_alpha=8),
        max_length=64,
        progress=False,
    )
    train_suite(demo_datasets, root, options, backbone=tiny_bb)
    return root


@pytest.fixture(scope="module")
def mixed_rows(demo_datasets) -> list[dict[str, str]]:
    """Every demo response, the four tasks shuffled together."""
    rows = [
        {"id": rid, "task": tid, "text": text}
        for tid, data in demo_datasets.items()
        for rid, text in zip(data.ids, data.texts, strict=True)
    ]
    order = np.random.default_rng(0).permutation(len(rows))
    return [rows[i] for i in order]


@pytest.fixture(scope="module")
def mixed_csv(tmp_path_factory, mixed_rows) -> Path:
    return write_table(tmp_path_factory.mktemp("mixed") / "mixed.csv", mixed_rows)


@pytest.fixture(scope="module")
def reference(lora_suite, mixed_rows) -> dict[str, dict]:
    """{id: output row} from SuiteScorer, one task at a time over the whole file (the non-streaming path)."""
    scorer = SuiteScorer(lora_suite, cache_size=4)
    out = {}
    for tid in dict.fromkeys(r["task"] for r in mixed_rows):
        rows = [r for r in mixed_rows if r["task"] == tid]
        for row in scorer.predict(tid, [r["text"] for r in rows], [r["id"] for r in rows]).rows():
            out[row["id"]] = row
    return out


def score(suite, source, output, **kw):
    kw.setdefault("chunk_rows", CHUNK)
    return score_file(suite, source, output, progress=False, **kw)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def interrupt_after(monkeypatch, chunks: int) -> None:
    """Make the run stop with KeyboardInterrupt (Ctrl-C) when it is about to score chunk ``chunks + 1``."""
    real, calls = streaming.score_chunk, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > chunks:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "score_chunk", flaky)


def assert_matches_reference(rows: list[dict[str, str]], reference: dict[str, dict], header: list[str]) -> None:
    for row in rows:
        ref = reference[row["id"]]
        assert row["task"] == ref["task"]
        for col in header[2:]:
            if col not in ref:
                assert row[col] == "", f"{col} does not apply to task {ref['task']}"
            elif col.startswith("pred_"):
                assert int(row[col]) == ref[col], (row["id"], col)
            elif col == "route":
                assert row[col] == ref[col], (row["id"], col)
            else:
                assert float(row[col]) == pytest.approx(ref[col], abs=2e-5), (row["id"], col)


# -- scoring ---------------------------------------------------------------------------------------------------------


def test_stream_equals_suite_scorer_row_for_row_in_input_order(lora_suite, mixed_csv, mixed_rows, reference, tmp_path):
    out = tmp_path / "scores.csv"
    result = score(lora_suite, mixed_csv, out)
    suite = Suite.open(lora_suite)
    header = output_columns(suite.spec(t) for t in suite.task_ids)
    with open(out, encoding="utf-8", newline="") as fh:
        assert next(csv.reader(fh)) == header  # every dimension of every task, fixed from the suite
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [r["id"] for r in mixed_rows]  # input order, each id once
    assert_matches_reference(rows, reference, header)
    assert result["rows"] == result["scored"] == N_ROWS and result["tasks"] == 4 and result["resumed_from"] == 0
    assert result["rows_per_second"] > 0 and result["output"] == str(out)
    assert not progress_path(out).exists()


def test_chunk_size_does_not_change_the_file(lora_suite, mixed_csv, tmp_path):
    """Same rows, ids, tasks and predictions; probabilities equal to the last printed digit. Not byte for byte: the
    chunk decides which rows share a batch, and a different batch shape changes float32 sums by ~1e-7 (gemv for one
    row vs gemm, the padded length), which can flip the 6th decimal of a rounded probability."""
    score(lora_suite, mixed_csv, tmp_path / "a.csv", chunk_rows=7)
    score(lora_suite, mixed_csv, tmp_path / "b.csv", chunk_rows=1000)
    small, large = read_rows(tmp_path / "a.csv"), read_rows(tmp_path / "b.csv")
    assert len(small) == len(large) == N_ROWS
    for a, b in zip(small, large, strict=True):
        assert a.keys() == b.keys()
        for col, value in a.items():
            if col.startswith(("prob_", "confidence")) and value:
                assert abs(float(value) - float(b[col])) <= 1.01e-6, (a["id"], col)
            else:
                assert value == b[col], (a["id"], col)


def test_full_suite_streams_through_suite_scorer(tmp_path, demo_datasets, tiny_bb, tiny_backbone_path, mixed_rows):
    tasks = ("demo-photosynthesis", "demo-argument")
    options = TrainOptions(
        method="full", backbone=str(tiny_backbone_path), config=CONFIG, max_length=64, progress=False
    )
    train_suite({t: demo_datasets[t] for t in tasks}, tmp_path / "full", options, backbone=tiny_bb)
    rows = [r for r in mixed_rows if r["task"] in tasks][:50]
    source = write_table(tmp_path / "two.jsonl", rows)
    result = score(tmp_path / "full", source, tmp_path / "out.jsonl", chunk_rows=8)
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [g["id"] for g in got] == [r["id"] for r in rows] and result["tasks"] == 2
    scorer = SuiteScorer(tmp_path / "full")
    for tid in tasks:
        mine = [r for r in rows if r["task"] == tid]
        expected = scorer.predict(tid, [r["text"] for r in mine], [r["id"] for r in mine]).rows()
        by_id = {g["id"]: g for g in got}
        for exp in expected:
            row = by_id[exp["id"]]
            assert {k: v for k, v in row.items() if v is not None}.keys() == exp.keys()
            assert all(row[k] == pytest.approx(v, abs=2e-5) for k, v in exp.items() if k not in ("id", "task"))


def test_parquet_in_and_out_give_the_csv_results(lora_suite, mixed_csv, mixed_rows, tmp_path):
    source = write_table(tmp_path / "mixed.parquet", mixed_rows)
    score(lora_suite, mixed_csv, tmp_path / "out.csv")
    result = score(lora_suite, source, tmp_path / "out.parquet")
    assert result["rows"] == N_ROWS
    assert read_table(tmp_path / "out.parquet") == read_table(tmp_path / "out.csv")
    assert not staging_path(tmp_path / "out.parquet").exists() and not progress_path(tmp_path / "out.parquet").exists()


def test_generated_ids_follow_the_row_numbers(lora_suite, mixed_rows, tmp_path):
    source = write_table(tmp_path / "noid.tsv", [{"task": r["task"], "text": r["text"]} for r in mixed_rows[:30]])
    score(lora_suite, source, tmp_path / "out.tsv", chunk_rows=4)
    rows = read_table(tmp_path / "out.tsv")
    assert [r["id"] for r in rows] == [f"noid:{i + 2}" for i in range(30)]


# -- resuming --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_interrupted_run_resumes_to_the_uninterrupted_file(lora_suite, mixed_csv, tmp_path, monkeypatch, ext):
    expected = tmp_path / f"expected.{ext}"
    score(lora_suite, mixed_csv, expected)
    out = tmp_path / f"scores.{ext}"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        score(lora_suite, mixed_csv, out)
    monkeypatch.undo()
    state = read_progress(out)
    assert state["rows_done"] == 2 * CHUNK and state["last_row"] == 2 * CHUNK + 1  # CSV rows start at 2
    stream = staging_path(out) if ext == "parquet" else out
    assert stream.stat().st_size == state["bytes"]
    assert ext != "parquet" or not out.exists()  # a Parquet output appears complete or not at all
    with open(stream, "ab") as fh:  # a chunk torn by the interruption, past the last commit
        fh.write(b'{"id": "torn-row", "ta' if ext != "csv" else b"torn-row,demo-arg")
    result = score(lora_suite, mixed_csv, out)
    assert result["resumed_from"] == 2 * CHUNK and result["scored"] == N_ROWS - 2 * CHUNK
    assert result["rows"] == N_ROWS and result["tasks"] == 4
    if ext == "parquet":
        assert read_table(out) == read_table(expected)
    else:
        assert out.read_bytes() == expected.read_bytes()
    ids = [r["id"] for r in read_table(out)]
    assert len(ids) == len(set(ids)) == N_ROWS
    assert not progress_path(out).exists() and not staging_path(out).exists()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_kill_9_then_rerun_gives_the_uninterrupted_file(lora_suite, mixed_csv, tmp_path):
    expected, out = tmp_path / "expected.jsonl", tmp_path / "scores.jsonl"
    score(lora_suite, mixed_csv, expected, chunk_rows=1)
    cmd = [sys.executable, "-c", "from scoreplex.cli import app; app()", "score", lora_suite, mixed_csv, out]
    cmd += ["--chunk-rows", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while (state := read_progress(out)) is None or state["rows_done"] < 1:
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no chunk was committed in time"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed = read_progress(out)
    assert 1 <= killed["rows_done"] < N_ROWS
    result = score(lora_suite, mixed_csv, out, chunk_rows=1)
    assert result["resumed_from"] == killed["rows_done"] and result["rows"] == N_ROWS
    assert out.read_bytes() == expected.read_bytes()


def test_a_changed_input_or_option_is_refused_and_restart_starts_over(lora_suite, mixed_csv, tmp_path, monkeypatch):
    source = tmp_path / "in.csv"
    shutil.copy(mixed_csv, source)
    out = tmp_path / "out.csv"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        score(lora_suite, source, out)
    monkeypatch.undo()
    with pytest.raises(ResumeError, match=r"reading options \(id 'id' -> None\).*--restart"):
        score(lora_suite, source, out, columns=ColumnMap(id=None))
    with open(source, "a", encoding="utf-8") as fh:
        fh.write("extra-1,demo-argument,one more answer\n")
    with pytest.raises(ResumeError, match=r"input file \(size, mtime_ns.*--restart") as info:
        score(lora_suite, source, out)
    assert isinstance(info.value, ScoreplexError) and str(out) in str(info.value)
    assert read_progress(out)["rows_done"] == 2 * CHUNK  # refusing touched nothing
    result = score(lora_suite, source, out, restart=True)
    assert result["resumed_from"] == 0 and result["rows"] == N_ROWS + 1
    assert read_rows(out)[-1]["id"] == "extra-1" and not progress_path(out).exists()


def test_an_existing_output_is_refused_unless_overwrite(lora_suite, mixed_csv, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n", encoding="utf-8")
    with pytest.raises(ResumeError, match="already exists.*--overwrite"):
        score(lora_suite, mixed_csv, out)
    with pytest.raises(ResumeError, match="already exists"):
        score(lora_suite, mixed_csv, out, restart=True)  # no unfinished run to restart: still someone's file
    assert out.read_text(encoding="utf-8") == "precious\n"
    assert score(lora_suite, mixed_csv, out, overwrite=True)["rows"] == N_ROWS
    with pytest.raises(ConfigError, match="overwrite the input"):
        score(lora_suite, mixed_csv, mixed_csv, overwrite=True)


def _bad_file(tmp_path: Path, rows: list[dict[str, str]], index: int, change: dict[str, str]) -> Path:
    rows = [dict(r) for r in rows]
    rows[index].update(change)
    return write_table(tmp_path / "bad.csv", rows)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "q-unknown"}, r"row 39, column 'task', task 'q-unknown': unknown task id 'q-unknown'"),
        ({"text": "   "}, r"row 39, column 'text', task '.*': the response text is empty"),
        ({"id": "<first>"}, r"row 39, column 'id', task '.*': response id '.*' appears twice: at rows 2 and 39"),
    ],
    ids=["unknown-task", "empty-text", "duplicate-id"],
)
def test_a_bad_row_in_the_stream_raises_data_error_naming_it(lora_suite, mixed_rows, tmp_path, change, message):
    change = {k: mixed_rows[0]["id"] if v == "<first>" else v for k, v in change.items()}
    source = _bad_file(tmp_path, mixed_rows, 37, change)  # record 38, in the third chunk; file row 39
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match=message):
        score(lora_suite, source, out)
    assert read_progress(out)["rows_done"] == 2 * CHUNK  # the chunks before it stay committed
    assert len(read_rows(out)) == 2 * CHUNK


def test_a_bad_first_chunk_writes_nothing(lora_suite, mixed_rows, tmp_path):
    source = _bad_file(tmp_path, mixed_rows, 3, {"task": "q1"})
    with pytest.raises(DataError, match="row 5"):
        score(lora_suite, source, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists() and not progress_path(tmp_path / "out.csv").exists()


def test_missing_columns_and_empty_files_are_named(lora_suite, tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("id,task,answer\nr1,demo-argument,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 1, column 'text': column 'text' not found; the file has columns: id"):
        score(lora_suite, path, tmp_path / "o.csv")
    path.write_text("id,task,text\n", encoding="utf-8")
    with pytest.raises(DataError, match="no responses"):
        score(lora_suite, path, tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()


def test_options_are_checked():
    with pytest.raises(ConfigError, match="chunk_rows=0"):
        StreamOptions(chunk_rows=0)
    with pytest.raises(ConfigError, match="quoting='all'"):
        StreamOptions(quoting="all")


def test_output_columns_cover_every_dimension_once():
    from scoreplex.tasks import Dimension, TaskSpec

    a = TaskSpec(id="a", dimensions=(Dimension("score", "ordinal", 3),))
    b = TaskSpec(id="b", dimensions=(Dimension("score", "ordinal", 4), Dimension("claim", "binary", 2)))
    assert output_columns([a, b]) == [
        "id",
        "task",
        "pred_score",
        *(f"prob_score_{k}" for k in range(4)),
        "pred_claim",
        "prob_claim_0",
        "prob_claim_1",
        "confidence",
        "route",
    ]


# -- the command line ------------------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_cli_scores_resumes_and_refuses(lora_suite, mixed_csv, tmp_path, monkeypatch):
    out = tmp_path / "out.csv"
    interrupt_after(monkeypatch, 2)
    result = invoke("score", lora_suite, mixed_csv, out, "--chunk-rows", CHUNK, "--no-progress")
    assert result.exit_code == 130 and "run the same command to resume" in result.output
    monkeypatch.undo()
    result = invoke("score", lora_suite, mixed_csv, out, "--chunk-rows", CHUNK)  # with the progress bar
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"resuming {out}: {2 * CHUNK} rows already scored" in text
    assert f"scored {N_ROWS} responses of 4 tasks" in text and f"resumed after {2 * CHUNK} rows" in text
    result = invoke("score", lora_suite, mixed_csv, out, "--no-progress")
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = invoke("score", lora_suite, mixed_csv, out, "--no-progress", "--overwrite", "--batch-size", 8)
    assert result.exit_code == 0, result.output


# -- one writer per output, output paths checked up front, a full disk -----------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path

from scoreplex import streaming

suite, source, out, signals = sys.argv[1:5]
signals, real, calls = Path(signals), streaming.score_chunk, []


def held(*args, **kwargs):  # commit the first chunk, then wait inside the second until released
    calls.append(1)
    if len(calls) == 2:
        (signals / "holding").touch()
        while not (signals / "release").exists():
            time.sleep(0.01)
    return real(*args, **kwargs)


streaming.score_chunk = held
streaming.score_file(suite, source, out, chunk_rows=int(sys.argv[5]), progress=False)
"""


def start_holder(tmp_path: Path, suite: Path, source: Path, out: Path) -> subprocess.Popen:
    """A real second process scoring ``source`` into ``out``; it holds the output, one chunk committed, until
    ``tmp_path / "signals" / "release"`` exists. Returns once it is holding."""
    signals = tmp_path / "signals"
    signals.mkdir()
    script = tmp_path / "holder.py"
    script.write_text(HOLDER, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, script, suite, source, out, signals, CHUNK]
    proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not (signals / "holding").exists():
        if proc.poll() is not None:
            raise AssertionError(f"the holding process ended early: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the holding process never reached its second chunk")
        time.sleep(0.01)
    return proc


def never_called():
    raise AssertionError("the scorer was loaded: the run did work it should have refused up front")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX flock")
def test_a_second_run_on_a_live_output_is_refused_and_the_first_completes(lora_suite, mixed_csv, tmp_path):
    expected, out = tmp_path / "expected.csv", tmp_path / "out.csv"
    score(lora_suite, mixed_csv, expected)
    first = start_holder(tmp_path, lora_suite, mixed_csv, out)
    try:
        before = (read_progress(out), out.read_bytes())
        assert before[0]["rows_done"] == CHUNK and streaming.lock_path(out).exists()
        for flags in ({}, {"restart": True}, {"overwrite": True}):
            with pytest.raises(
                ResumeError, match=rf"another process \(pid {first.pid}\) is writing {re.escape(str(out))}"
            ) as info:
                score(lora_suite, mixed_csv, out, scorer=never_called, **flags)
            assert isinstance(info.value, ScoreplexError)
        result = invoke("score", lora_suite, mixed_csv, out, "--no-progress")
        assert result.exit_code == 2 and "error: another process" in result.output
        assert (read_progress(out), out.read_bytes()) == before  # the refused runs touched nothing
        (tmp_path / "signals" / "release").touch()
        assert first.wait(timeout=180) == 0, first.stderr.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    assert out.read_bytes() == expected.read_bytes()  # every row once, as an uninterrupted run writes it
    assert not streaming.lock_path(out).exists() and not progress_path(out).exists()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_the_lock_of_a_killed_run_does_not_block_the_next(lora_suite, mixed_csv, tmp_path):
    out = tmp_path / "out.jsonl"
    killed = start_holder(tmp_path, lora_suite, mixed_csv, out)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    killed.stderr.close()
    assert killed.returncode == -signal.SIGKILL
    assert streaming.lock_path(out).exists()  # left behind, but its flock died with the process
    result = score(lora_suite, mixed_csv, out)
    assert result["resumed_from"] == CHUNK and result["rows"] == N_ROWS
    ids = [r["id"] for r in read_table(out)]
    assert len(ids) == len(set(ids)) == N_ROWS
    assert not streaming.lock_path(out).exists()


def test_a_failed_run_releases_the_output(lora_suite, mixed_rows, tmp_path):
    source = _bad_file(tmp_path, mixed_rows, 37, {"task": "q-unknown"})
    out = tmp_path / "out.csv"
    with pytest.raises(DataError):
        score(lora_suite, source, out)
    assert not streaming.lock_path(out).exists()
    with pytest.raises(DataError, match="row 39"):  # the next run is not blocked: it resumes, and meets the row
        score(lora_suite, source, out)


def _uncreatable(tmp_path: Path, kind: str) -> Path:
    if kind == "under-a-file":
        (tmp_path / "out.csv").write_text("a file\n", encoding="utf-8")
        return tmp_path / "out.csv" / "x.csv"
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc, where no folder can be created")
    return Path(f"/proc/scoreplex-{os.getpid()}/deeper/x.csv")


@pytest.mark.parametrize("kind", ["under-a-file", "uncreatable-folder"])
def test_an_output_that_cannot_be_created_fails_before_any_work(lora_suite, tmp_path, kind):
    out = _uncreatable(tmp_path, kind)
    missing_input = tmp_path / "not-read.csv"  # checked after the output: a DataError would mean it came first
    with pytest.raises(ConfigError, match=rf"cannot write {re.escape(str(out))}: ") as info:
        score(lora_suite, missing_input, out, scorer=never_called)
    assert str(out.parent) in str(info.value)
    result = invoke("score", lora_suite, missing_input, out, "--no-progress")
    assert result.exit_code == 2 and f"error: cannot write {out}" in " ".join(result.output.split())


@pytest.mark.parametrize("name", ["scores", "scores.csv"])
def test_an_output_that_is_a_folder_is_refused(lora_suite, mixed_csv, tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    with pytest.raises(ConfigError, match=rf"the output {re.escape(str(folder))} is a folder; give a file path"):
        score(lora_suite, mixed_csv, folder, scorer=never_called, overwrite=True)


def _no_space_in_output(monkeypatch, at: int, code: int) -> None:
    """The 3rd chunk's write fills the disk half-way through."""
    real, calls = streaming._Output.append, []

    def full(self, data: bytes) -> None:
        calls.append(1)
        if len(calls) == at:
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(code, os.strerror(code))
        real(self, data)

    monkeypatch.setattr(streaming._Output, "append", full)


def _no_space_in_progress(monkeypatch, at: int, code: int) -> None:
    real, calls = streaming._write_json_durable, []

    def full(path, data):
        calls.append(1)
        if len(calls) == at:
            raise OSError(code, os.strerror(code), str(path))
        real(path, data)

    monkeypatch.setattr(streaming, "_write_json_durable", full)


def _no_space_in_parquet(monkeypatch, at: int, code: int) -> None:
    def full(source, target, columns, *types):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(streaming, "_jsonl_to_parquet", full)


@pytest.mark.parametrize(
    ("where", "ext", "code"),
    [
        ("output", "csv", errno.ENOSPC),
        ("output", "parquet", errno.ENOSPC),
        ("progress", "jsonl", errno.ENOSPC),
        ("progress", "csv", errno.EDQUOT),
        ("parquet", "parquet", errno.ENOSPC),
    ],
)
def test_a_full_disk_is_one_clear_error_and_the_rerun_resumes(
    lora_suite, mixed_csv, tmp_path, monkeypatch, where, ext, code
):
    expected, out = tmp_path / f"expected.{ext}", tmp_path / f"out.{ext}"
    score(lora_suite, mixed_csv, expected)
    {"output": _no_space_in_output, "progress": _no_space_in_progress, "parquet": _no_space_in_parquet}[where](
        monkeypatch, 3, code
    )
    written = {"output": staging_path(out) if ext == "parquet" else out, "progress": progress_path(out)}.get(where, out)
    with pytest.raises(
        streaming.NoSpaceError, match=rf"no space left writing {re.escape(str(written))} .*re-run the same command"
    ) as info:
        score(lora_suite, mixed_csv, out)
    assert isinstance(info.value, ScoreplexError) and isinstance(info.value, OSError) and info.value.errno == code
    monkeypatch.undo()
    done = N_ROWS if where == "parquet" else 2 * CHUNK
    assert read_progress(out)["rows_done"] == done and not streaming.lock_path(out).exists()
    result = score(lora_suite, mixed_csv, out)  # space freed: the same call resumes
    assert result["resumed_from"] == done and result["rows"] == N_ROWS
    if ext == "parquet":
        assert read_table(out) == read_table(expected)
    else:
        assert out.read_bytes() == expected.read_bytes()
    assert not progress_path(out).exists() and not staging_path(out).exists()


def test_cli_reports_a_full_disk_as_one_error(lora_suite, mixed_csv, tmp_path, monkeypatch):
    out = tmp_path / "out.csv"
    _no_space_in_output(monkeypatch, 2, errno.ENOSPC)
    result = invoke("score", lora_suite, mixed_csv, out, "--chunk-rows", CHUNK, "--no-progress")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"error: no space left writing {out}" in text and "Traceback" not in text
    assert "the 16 rows committed before it are kept" in text
    monkeypatch.undo()
    result = invoke("score", lora_suite, mixed_csv, out, "--chunk-rows", CHUNK, "--no-progress")
    assert result.exit_code == 0 and f"resumed after {CHUNK} rows" in result.output


# -- the incremental reader ------------------------------------------------------------------------------------------


def _chunks_equal_read_table(path: Path, **kw) -> None:
    whole = read_table(path, **kw)
    chunks = list(iter_table(path, chunk_rows=3, **kw))
    assert [len(c) for c in chunks[:-1]] == [3] * (len(chunks) - 1) and 1 <= len(chunks[-1]) <= 3
    assert [r for c in chunks for r in c] == list(whole)
    assert [n for c in chunks for n in c.rows] == whole.rows
    assert all(c.file == whole.file and c.fmt == whole.fmt and c.header_row == whole.header_row for c in chunks)
    assert chunks[-1].columns == whole.columns


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_iter_table_reads_delimited_files_like_read_table(tmp_path, fmt):
    sep = "," if fmt == "csv" else "\t"
    lines = [f"id{sep}text{sep}score", f"a{sep}plain{sep}1", "", f'b{sep}"two{sep}\nlines"{sep}2']
    lines += [f"r{i}{sep}text {i}{sep}{i % 3}" for i in range(8)] + ["  ", f"z{sep}last{sep}0"]
    path = tmp_path / f"t.{fmt}"
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode())
    _chunks_equal_read_table(path)


def test_iter_table_reads_json_lines_and_parquet_like_read_table(tmp_path):
    objs = [{"id": f"r{i}", "text": f"t {i}", "score": i % 3, "x": [i] if i % 2 else None} for i in range(10)]
    del objs[6]["x"]  # a record lacking a key seen before gets ""
    lines = [json.dumps(o) for o in objs]
    lines.insert(4, "   ")
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _chunks_equal_read_table(path)
    _chunks_equal_read_table(write_table(tmp_path / "t.parquet", objs))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("fields.csv", b"id,text\na,b\nc,d,e\n"),
        ("huge.csv", b"id,text\na,b\nc," + b"x" * 140_000 + b"\n"),  # over the cell limit (set below for it)
        ("bytes.csv", b'id,text\na,fine\nb,"two\nlines \xff here"\n'),
        ("header.csv", b"id,id\na,b\n"),
        ("empty.csv", b"\n\n"),
        ("json.jsonl", b'{"id": "a"}\n\n{"id": "b",\n'),
        ("list.jsonl", b'{"id": "a"}\n[1, 2]\n'),
        ("bytes.jsonl", b'{"id": "a"}\n{"id": "b", "text": "caf\xe9"}\n'),
        ("badjson.jsonl", b'{"id": "a"}\n{"id": \xff}\n'),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_iter_table_raises_read_tables_errors(tmp_path, monkeypatch, name, content):
    from scoreplex.data import readers

    monkeypatch.setattr(readers, "MAX_CELL_CHARS", 131_072)  # long cells read up to the limit; this one is over it
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as whole:
        read_table(path)
    with pytest.raises(DataError) as streamed:
        list(iter_table(path, chunk_rows=1))
    assert str(streamed.value) == str(whole.value)


def test_iter_table_checks_arguments_at_the_call_and_yields_the_columns_of_an_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="chunk_rows=0"):
        iter_table(tmp_path / "x.csv", chunk_rows=0)
    with pytest.raises(DataError, match="file not found"):
        iter_table(tmp_path / "x.csv")
    path = tmp_path / "h.csv"
    path.write_text("id,task,text\n", encoding="utf-8")
    (chunk,) = iter_table(path)
    assert len(chunk) == 0 and chunk.columns == ["id", "task", "text"]


def test_estimate_rows_counts_lines_and_reads_parquet_metadata(tmp_path, mixed_rows):
    assert estimate_rows(write_table(tmp_path / "a.csv", mixed_rows[:9]), "csv") == 9
    assert estimate_rows(write_table(tmp_path / "a.jsonl", mixed_rows[:9]), "jsonl") == 9
    assert estimate_rows(write_table(tmp_path / "a.parquet", mixed_rows[:9]), "parquet") == 9
    (tmp_path / "b.jsonl").write_text('{"a": 1}\n{"a": 2}', encoding="utf-8")
    assert estimate_rows(tmp_path / "b.jsonl", "jsonl") == 2
