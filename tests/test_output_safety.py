"""Outputs are checked before any work: ``export-onnx`` and ``merge`` refuse an output folder that cannot be created
(under a file, on a file system that allows no folder there, an existing file) with one ConfigError naming it,
before the model is loaded or a feature computed. (``score``'s output checks, its one-writer lock and its full-disk
handling are tested in test_streaming.py.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from tests.lora_suites import train_tiny_suite
from typer.testing import CliRunner

from scoreplex.cli import app
from scoreplex.engine import onnx_export
from scoreplex.engine.onnx_export import export_onnx
from scoreplex.errors import ConfigError
from scoreplex.merging import similarity  # where the merge looks up its features and GW matrix
from scoreplex.merging.gwsmm import MergeJob, run_merge
from scoreplex.methods import MethodSettings


@pytest.fixture(scope="module")
def suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    root = tmp_path_factory.mktemp("safety") / "lora"
    train_tiny_suite(demo_datasets, root, tiny_bb, tiny_backbone_path, "lora", MethodSettings(), max_length=32)
    return root


def bad_folder(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """(an output folder that cannot be created, the path the message must name as the obstacle)."""
    if kind == "under-a-file":
        (tmp_path / "out.csv").write_text("a file\n", encoding="utf-8")
        return tmp_path / "out.csv" / "export", tmp_path / "out.csv"
    if kind == "is-a-file":
        (tmp_path / "export").write_text("a file\n", encoding="utf-8")
        return tmp_path / "export", tmp_path / "export"
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc, where no folder can be created")
    folder = Path(f"/proc/scoreplex-{os.getpid()}/deeper/export")
    return folder, folder


KINDS = ["under-a-file", "is-a-file", "uncreatable-folder"]


def forbid(monkeypatch, target, name: str) -> None:
    def work(*args, **kwargs):
        raise AssertionError(f"{name} ran: the bad output was not refused up front")

    monkeypatch.setattr(target, name, work)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


@pytest.mark.parametrize("kind", KINDS)
def test_export_onnx_refuses_a_bad_out_dir_before_loading_the_model(suite, tmp_path, monkeypatch, kind):
    out, obstacle = bad_folder(tmp_path, kind)
    forbid(monkeypatch, onnx_export, "_suite_and_backbone")
    forbid(monkeypatch, onnx_export.torch.onnx, "export")
    with pytest.raises(ConfigError, match=rf"cannot write {re.escape(str(out))}: .*{re.escape(str(obstacle))}"):
        export_onnx(suite, out)
    result = invoke("export-onnx", suite, out)
    assert result.exit_code == 2 and f"error: cannot write {out}" in " ".join(result.output.split())


@pytest.mark.parametrize("kind", KINDS)
def test_merge_refuses_a_bad_out_dir_before_any_work(suite, demo_datasets, demo_files, tmp_path, monkeypatch, kind):
    out, obstacle = bad_folder(tmp_path, kind)
    forbid(monkeypatch, similarity, "suite_features")
    forbid(monkeypatch, similarity, "gw_matrix")
    with pytest.raises(ConfigError, match=rf"cannot write {re.escape(str(out))}: .*{re.escape(str(obstacle))}"):
        run_merge(suite, demo_datasets, out, MergeJob(n_groups=2), progress=False)
    result = invoke("merge", suite, demo_files["train"], out, "--groups", 2)
    assert result.exit_code == 2 and f"error: cannot write {out}" in " ".join(result.output.split())


def test_merge_into_an_existing_suite_is_refused_before_any_work(suite, demo_datasets, monkeypatch):
    forbid(monkeypatch, similarity, "suite_features")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(suite))} already holds a suite"):
        run_merge(suite, demo_datasets, suite, MergeJob(n_groups=2), progress=False)
