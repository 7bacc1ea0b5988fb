"""Tests of the ``scoreplex`` command line (and the workflows behind it), end to end on the tiny BERT."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scoreplex.cli import app
from scoreplex.data.demo import demo_specs, write_demo
from scoreplex.suite import Suite

DIMS = list(dict.fromkeys(d.name for s in demo_specs() for d in s.dimensions))
TASK_IDS = [s.id for s in demo_specs()]
N_TRAIN, N_TEST = 40, 15


def invoke(*args: str):
    """Run the CLI; COLUMNS keeps rich from wrapping messages mid-phrase."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def flat(text: str) -> str:
    return " ".join(text.split())


def label_args() -> list[str]:
    args = []
    for d in DIMS:
        args += ["--label", f"{d}={d}", "--second", f"{d}={d}_rater2"]
    return args


@pytest.fixture(scope="module")
def demo_csvs(tmp_path_factory) -> dict[str, Path]:
    return write_demo(tmp_path_factory.mktemp("cli-data"), n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture(scope="module")
def cli_suite(tmp_path_factory, demo_csvs, tiny_backbone_path) -> Path:
    out = tmp_path_factory.mktemp("cli") / "suite"
    result = invoke(
        "train",
        demo_csvs["train"],
        "--out",
        out,
        "--backbone",
        tiny_backbone_path,
        "--epochs",
        1,
        "--tasks",
        demo_csvs["tasks"],
        "--batch-size",
        16,
        *label_args(),
    )
    assert result.exit_code == 0, result.output
    assert f"suite written to {out} (4 tasks" in flat(result.output)
    return out


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["score"], ["info"], ["demo"]])
def test_help_works_for_every_command(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_methods_lists_every_registered_method_with_its_defaults():
    from scoreplex.methods import METHODS

    result = invoke("methods")
    assert result.exit_code == 0, result.output
    for name, method in METHODS.items():
        assert name in result.output
        assert f"epochs {method.training_defaults['epochs']}" in flat(result.output)
    assert "lora_r 16, lora_alpha 32" in flat(result.output)  # the method's own settings beside its training ones


def test_train_writes_a_verified_suite_of_every_task(cli_suite, tiny_backbone_path):
    suite = Suite.open(cli_suite, verify=True)
    assert suite.task_ids == TASK_IDS and suite.method == "lora"
    assert suite.manifest["backbone"]["path"] == str(tiny_backbone_path)
    assert all(suite.task_info(t)["summary"]["train"]["epochs_run"] == 1 for t in TASK_IDS)
    assert all(f.suffix in (".json", ".safetensors") for f in cli_suite.rglob("*") if f.is_file())


def test_info_lists_the_tasks(cli_suite):
    result = invoke("info", cli_suite)
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "method lora" in out and "4 tasks" in out
    assert all(t in out for t in TASK_IDS)
    assert "claim:binary/2" in out and "score:ordinal/4" in out
    assert "decoding" in out and "T=" in out  # each task's fitted decoding (train fits it by default)


def test_evaluate_writes_a_report(cli_suite, demo_csvs, tmp_path: Path):
    report = tmp_path / "r.json"
    result = invoke("evaluate", cli_suite, demo_csvs["test"], "--report", report, *label_args())
    assert result.exit_code == 0, result.output
    assert "mean QWK" in result.output
    data = json.loads(report.read_text(encoding="utf-8"))
    assert list(data["tasks"]) == TASK_IDS
    assert all(m["n"] == N_TEST and "human" in m for m in data["tasks"].values())
    assert "exact_match" in data["tasks"]["demo-argument"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_score_writes_one_row_per_response(cli_suite, demo_csvs, tmp_path: Path, ext: str):
    out = tmp_path / f"scores.{ext}"
    result = invoke("score", cli_suite, demo_csvs["test"], out)
    assert result.exit_code == 0, result.output
    assert f"scored {4 * N_TEST} responses of 4 tasks" in flat(result.output)
    if ext == "jsonl":
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    else:
        rows = read_csv(out)
    inputs = read_csv(demo_csvs["test"])
    assert len(rows) == len(inputs)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in inputs)
    task_of = {r["id"]: r["task"] for r in inputs}
    assert all(r["task"] == task_of[r["id"]] for r in rows)
    columns = set(rows[0])
    assert {f"pred_{d}" for d in DIMS} <= columns and "confidence" in columns
    assert {"prob_score_0", "prob_score_3", "prob_claim_1", "prob_energy_transfer_0"} <= columns
    for spec in demo_specs():
        for r in (r for r in rows if r["task"] == spec.id):
            assert 0.0 < float(r["confidence"]) <= 1.0
            for dim in spec.dimensions:
                probs = [float(r[f"prob_{dim.name}_{k}"]) for k in range(dim.num_classes)]
                assert sum(probs) == pytest.approx(1.0, abs=1e-4)
                assert int(r[f"pred_{dim.name}"]) == max(range(dim.num_classes), key=probs.__getitem__)


def write_single_task(tmp_path: Path, scores: list[str]) -> tuple[Path, Path]:
    data = tmp_path / "bad.csv"
    lines = ["id,task,text,score"] + [f"r{i},q1,answer number {i},{s}" for i, s in enumerate(scores)]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"id": "q1", "dimensions": [{"name": "score", "num_classes": 4}]}]), encoding="utf-8")
    return data, tasks


def test_train_refuses_a_label_out_of_range_naming_row_and_column(tmp_path: Path, tiny_backbone_path):
    data, tasks = write_single_task(tmp_path, ["1", "7", "2", "0"])
    result = invoke("train", data, "--out", tmp_path / "s", "--tasks", tasks, "--backbone", tiny_backbone_path)
    assert result.exit_code == 2
    out = flat(result.output)
    assert "error:" in out and "row 3" in out and "column 'score'" in out and "score 7" in out
    assert not (tmp_path / "s").exists()


def test_train_refuses_a_missing_text_column_naming_it(tmp_path: Path, tiny_backbone_path):
    data, tasks = write_single_task(tmp_path, ["1", "2", "2", "0"])
    result = invoke(
        "train",
        data,
        "--out",
        tmp_path / "s",
        "--tasks",
        tasks,
        "--text-col",
        "answer",
        "--backbone",
        tiny_backbone_path,
    )
    assert result.exit_code == 2
    out = flat(result.output)
    assert "column 'answer' not found" in out and "text" in out


def test_train_refuses_an_unknown_method_listing_the_valid_ones(tmp_path: Path, tiny_backbone_path):
    data, tasks = write_single_task(tmp_path, ["1", "2", "3", "0"] * 3)
    result = invoke(
        "train", data, "--out", tmp_path / "s", "--tasks", tasks, "--method", "qlora", "--backbone", tiny_backbone_path
    )
    assert result.exit_code == 2
    assert "qlora" in result.output and "full, head, lora" in flat(result.output)


def test_train_refuses_a_missing_backbone(tmp_path: Path):
    data, tasks = write_single_task(tmp_path, ["1", "2", "3", "0"] * 3)
    result = invoke("train", data, "--out", tmp_path / "s", "--tasks", tasks, "--backbone", tmp_path / "none")
    assert result.exit_code == 2 and "never downloads" in flat(result.output)


def test_info_on_a_folder_without_a_suite_fails_cleanly(tmp_path: Path):
    result = invoke("info", tmp_path)
    assert result.exit_code == 2
    assert "no manifest.json" in flat(result.output)


def test_score_refuses_tasks_the_suite_lacks(cli_suite, tmp_path: Path):
    data, _ = write_single_task(tmp_path, ["1"])
    result = invoke("score", cli_suite, data, tmp_path / "out.csv")
    assert result.exit_code == 2
    assert "unknown task id 'q1'" in flat(result.output)
    assert not (tmp_path / "out.csv").exists()


def test_demo_runs_end_to_end(tmp_path: Path, tiny_backbone_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--backbone", tiny_backbone_path, "--epochs", 1, "--out", out)
    assert result.exit_code == 0, result.output
    assert "mean QWK" in result.output and "next: scoreplex info" in result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert list(report["tasks"]) == TASK_IDS
    assert Suite.open(report["suite"]).task_ids == TASK_IDS
    test_rows = read_csv(out / "data" / "test.csv")
    assert len(read_csv(Path(report["scores"]))) == len(test_rows) == 4 * 150
