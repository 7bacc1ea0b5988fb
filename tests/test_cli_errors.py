"""No traceback reaches a CLI user: an OSError or ScoreplexError no command handles is one ``error:`` line, exit 2."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scoreplex.cli import app, main


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def flat(text: str) -> str:
    return " ".join(text.split())


OS_ERRORS = [
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "suite/manifest.json"), "check the path"),
    (PermissionError(errno.EACCES, "Permission denied", "suite/manifest.json"), "check the permissions"),
    (OSError(errno.ENOSPC, "No space left on device", "suite/tasks/q1/module.safetensors"), "free some disk space"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "a.tmp", "b"), "check the path and the disk"),
]


@pytest.mark.parametrize(("exc", "fix"), OS_ERRORS, ids=[errno.errorcode[e.errno] for e, _ in OS_ERRORS])
def test_an_unhandled_os_error_is_one_error_line_with_the_path_and_a_fix(exc, fix, tmp_path: Path, monkeypatch):
    from scoreplex.suite import Suite

    def failing(*args, **kwargs):
        raise exc

    monkeypatch.setattr(Suite, "open", failing)
    result = invoke("info", tmp_path)
    assert result.exit_code == 2, result.output
    paths = " -> ".join(p for p in (exc.filename, exc.filename2) if p)
    assert flat(result.output).startswith(f"error: {exc.strerror}: {paths}. Fix: {fix}")
    assert len(result.output.strip().splitlines()) <= 2  # one line (wrapped at most once)
    assert isinstance(result.exception, SystemExit)  # handled: no exception escaped the command


def test_an_unwritable_suite_folder_fails_cleanly(tmp_path: Path, tiny_backbone_path):
    data = tmp_path / "d.csv"
    data.write_text(
        "id,task,text,score\n" + "".join(f"r{i},q1,text {i},{i % 2}\n" for i in range(10)), encoding="utf-8"
    )
    result = invoke("train", data, "--out", "/dev/null/suite", "--backbone", tiny_backbone_path, "--no-progress")
    assert result.exit_code == 2, result.output
    assert "error: Not a directory: /dev/null/suite" in flat(result.output)


def test_main_reports_an_os_error_without_traceback(tmp_path: Path, monkeypatch, capsys):
    from scoreplex.suite import Suite

    def failing(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "manifest.json"))

    monkeypatch.setattr(Suite, "open", failing)
    monkeypatch.setattr(sys, "argv", ["scoreplex", "info", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flat(err).startswith(f"error: Permission denied: {tmp_path / 'manifest.json'}. Fix: check the permissions")


def test_a_scoreplex_error_no_command_catches_is_one_error_line(monkeypatch):
    import scoreplex.cli as cli
    from scoreplex.errors import ConfigError

    def failing(*args, **kwargs):
        raise ConfigError("the [methods] table cannot be drawn; fix it.")

    monkeypatch.setattr(cli, "_table", failing)  # `methods` prints outside any try block
    result = invoke("methods")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert flat(result.output) == "error: the [methods] table cannot be drawn; fix it."  # brackets kept, not markup


@pytest.mark.parametrize("cell", ["100000000000000000000", "1e20"])
def test_a_huge_score_is_one_error_line(cell: str, tmp_path: Path, tiny_backbone_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        f'{{"id": "r0", "task": "q1", "text": "an answer", "score": 1}}\n'
        f'{{"id": "r1", "task": "q1", "text": "another", "score": {cell}}}\n',
        encoding="utf-8",
    )
    result = invoke("train", data, "--out", tmp_path / "s", "--backbone", tiny_backbone_path)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 2 and "error:" in result.output and "row 2" in flat(result.output)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--label", "=score", "--label '=score' names no dimension; give DIM=COLUMN"),
        ("--label", "score=", "--label 'score=' names no column; give DIM=COLUMN"),
        ("--second", "=", "--second '=' names no dimension"),
    ],
)
def test_a_malformed_column_mapping_names_the_option_and_the_syntax(option, value, message, tmp_path: Path):
    data = tmp_path / "d.csv"
    data.write_text("id,task,text,score\nr0,q1,text,1\n", encoding="utf-8")
    result = invoke("train", data, "--out", tmp_path / "s", option, value)
    assert result.exit_code == 2 and message in flat(result.output), result.output


# -- the benchmark scripts: the same one-line error, exit 2 ------------------------------------------------------------
def test_run_script_turns_a_user_error_into_one_line_and_exit_2(capsys):
    from scoreplex.errors import ConfigError, run_script

    def bad_option():
        raise ConfigError("--grid 'x': give one of ['small'] or points like '0.2:1,0.5:2'.")

    with pytest.raises(SystemExit) as exc:
        run_script(bad_option)
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: --grid 'x': give one of ['small'] or points like '0.2:1,0.5:2'.\n"

    def missing_file():
        open("/nonexistent/asap-sas/train.tsv", encoding="utf-8")  # noqa: SIM115

    with pytest.raises(SystemExit) as exc:
        run_script(missing_file)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No such file or directory: /nonexistent/asap-sas/train.tsv") and "check" in err

    def no_filename():
        raise FileNotFoundError("model file missing")

    with pytest.raises(SystemExit):
        run_script(no_filename)
    assert capsys.readouterr().err == "error: model file missing; check the path.\n"

    def bug():
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        run_script(bug)


def test_a_benchmark_given_a_wrong_suite_exits_2_without_a_traceback(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "engine.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--suite", str(tmp_path / "no-suite"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "is not a scoreplex suite" in proc.stderr and str(tmp_path / "no-suite") in proc.stderr
