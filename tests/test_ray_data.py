"""Batch scoring on Ray Data (scoreplex.cluster.scoring): ``scoreplex score ... --ray`` gives the local file.

A tiny LoRA suite of the four demo tasks scores a shuffled file that mixes them, on the session's local Ray cluster
(4 logical CPUs). Invariants: with 1 or 2 actors the output is the local command's byte for byte (CSV) or value for
value (Parquet), in input order; an existing output is refused without --overwrite; bad input fails as locally
(exit code 2, the row named); an actor pool larger than the cluster is refused before scoring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from lora_suites import train_tiny_suite
from scoreplex.cli import app
from scoreplex.data.readers import write_table
from scoreplex.errors import ConfigError, DataError
from scoreplex.methods import MethodSettings
from scoreplex.streaming import score_file

CHUNK = 32  # 240 rows: 8 chunks, the last one short, so 2 actors share the work and order matters


@pytest.fixture(scope="module")
def lora_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    root = tmp_path_factory.mktemp("raydata") / "lora"
    train_tiny_suite(demo_datasets, root, tiny_bb, tiny_backbone_path, "lora", MethodSettings(lora_r=4, lora_alpha=8))
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, demo_datasets) -> dict[str, Path]:
    """The demo responses of the four tasks shuffled together, as CSV and as Parquet."""
    rows = [
        {"id": rid, "task": tid, "text": text}
        for tid, data in demo_datasets.items()
        for rid, text in zip(data.ids, data.texts, strict=True)
    ]
    rows = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    folder = tmp_path_factory.mktemp("raydata-in")
    return {fmt: write_table(folder / f"mixed.{fmt}", rows) for fmt in ("csv", "parquet")}


@pytest.fixture(scope="module")
def local(lora_suite, mixed, tmp_path_factory) -> dict[str, Path]:
    """The local command's outputs (CSV and Parquet) of the mixed file."""
    folder = tmp_path_factory.mktemp("raydata-local")
    out = {fmt: folder / f"local.{fmt}" for fmt in ("csv", "parquet")}
    for fmt, path in out.items():
        score_file(lora_suite, mixed[fmt], path, chunk_rows=CHUNK, progress=False)
    return out


def cli(*args):
    return CliRunner().invoke(app, ["score", *(str(a) for a in args), "--no-progress"], env={"COLUMNS": "250"})


@pytest.mark.parametrize(("fmt", "actors"), [("csv", 2), ("parquet", 2)])  # 1 actor: the same code, one pool
def test_ray_output_is_the_local_output(ray_cluster, lora_suite, mixed, local, tmp_path, fmt, actors):
    out = tmp_path / f"ray.{fmt}"
    args = [lora_suite, mixed[fmt], out, "--ray", "local", "--ray-actors", actors, "--chunk-rows", CHUNK]
    if actors == 2:  # an existing output is refused (before any scoring), then replaced with --overwrite
        out.write_bytes(b"keep me\n")
        refused = cli(*args)
        assert refused.exit_code == 2 and "--overwrite" in refused.output
        assert out.read_bytes() == b"keep me\n"
        args.append("--overwrite")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "scored 240 responses of 4 tasks" in result.output
    if fmt == "csv":
        assert out.read_bytes() == local["csv"].read_bytes()  # same header, rows in input order, same digits
    else:
        ray_table, local_table = pq.read_table(out), pq.read_table(local["parquet"])
        assert ray_table.schema == local_table.schema
        assert ray_table.to_pylist() == local_table.to_pylist()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary, lock or progress file is left


def test_bad_row_fails_as_locally_and_writes_nothing(ray_cluster, lora_suite, mixed, tmp_path):
    lines = mixed["csv"].read_text(encoding="utf-8").splitlines()
    bad_row = 3 * CHUNK + 5  # in a later chunk: the earlier chunks are already in the object store
    head, *rest = lines
    rest[bad_row - 2] = rest[bad_row - 2].replace(",demo-", ",nope-", 1)  # row numbers count the header as row 1
    source = tmp_path / "bad.csv"
    source.write_text("\n".join([head, *rest]) + "\n", encoding="utf-8")
    out = tmp_path / "scores.csv"
    local_run = cli(lora_suite, source, tmp_path / "local.csv", "--chunk-rows", CHUNK)
    ray_run = cli(lora_suite, source, out, "--ray", "local", "--chunk-rows", CHUNK)
    assert ray_run.exit_code == local_run.exit_code == 2
    assert f"row {bad_row}" in ray_run.output and "bad.csv" in ray_run.output and "nope-" in ray_run.output
    assert not out.exists()


def test_pool_larger_than_the_cluster_and_bad_options_are_refused(ray_cluster, lora_suite, mixed, tmp_path):
    from scoreplex.cluster.scoring import RayScoring, score_file_ray

    with pytest.raises(ConfigError, match="--ray-actors"):
        RayScoring(actors=0)
    with pytest.raises(ConfigError, match="--ray-cpus-per-actor"):
        RayScoring(cpus_per_actor=float("nan"))
    with pytest.raises(ConfigError, match="has 4 CPUs but 5 actors"):
        score_file_ray(lora_suite, mixed["csv"], tmp_path / "o.csv", ray=RayScoring(actors=5), progress=False)
    with pytest.raises(ConfigError, match="not resumable"):
        score_file_ray(lora_suite, mixed["csv"], tmp_path / "o.csv", restart=True)
    empty = tmp_path / "empty.csv"
    empty.write_text("id,task,text\n", encoding="utf-8")
    with pytest.raises(DataError, match="no responses"):
        score_file_ray(lora_suite, empty, tmp_path / "o.csv", progress=False)
    assert not (tmp_path / "o.csv").exists()
