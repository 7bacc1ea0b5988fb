"""``train --ray`` and ``merge --ray`` on a local Ray cluster: the same modules and the same GW matrix as the local
path, failures named by task, re-runs that resume. Tiny BERT, three demo tasks, two epochs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from scoreplex.errors import ConfigError
from scoreplex.suite import Suite

TASKS = 3


def module_digests(root: Path) -> dict[str, dict]:
    """Per task: the module file's hash and the fitted decoding and lexical records (what scoring reads)."""
    suite = Suite.open(root, verify=False)
    out = {}
    for task_id in suite.task_ids:
        info = json.loads((root / "tasks" / task_id / "task.json").read_text(encoding="utf-8"))
        out[task_id] = {
            "module": suite.manifest["tasks"][task_id]["files"]["module.safetensors"],
            "decoding": info.get("decoding"),
            "lexical": info.get("lexical"),
            "config": info["config"],
        }
    return out


@pytest.fixture(scope="module")
def three_tasks(demo_datasets):
    return {t: demo_datasets[t] for t in list(demo_datasets)[:TASKS]}


@pytest.fixture(scope="module")
def sequential_suite(tmp_path_factory, three_tasks, small_options, tiny_bb) -> Path:
    """LoRA modules of three demo tasks trained here, one after another (the reference, and a merge input)."""
    from scoreplex.training.suite import train_suite

    root = tmp_path_factory.mktemp("ray-train") / "sequential"
    train_suite(three_tasks, root, small_options("lora"), backbone=tiny_bb)
    return root


def test_ray_training_gives_the_sequential_modules(
    ray_cluster, sequential_suite, three_tasks, small_options, tiny_bb, tmp_path
):
    from scoreplex.cluster.train import train_suite_ray

    done: list[str] = []
    suite = train_suite_ray(
        three_tasks,
        tmp_path / "ray",
        small_options("lora"),
        backbone=tiny_bb,
        on_task_done=lambda r: done.append(r.task_id),
    )
    assert sorted(done) == sorted(three_tasks)
    assert sorted(suite.task_ids) == sorted(three_tasks)
    seq, par = module_digests(sequential_suite), module_digests(tmp_path / "ray")
    assert par == seq
    assert any(d["decoding"] is not None for d in par.values())  # the post-training fits ran on the workers
    manifests = [Suite.open(p, verify=False).manifest for p in (sequential_suite, tmp_path / "ray")]
    assert manifests[0]["max_length"] == manifests[1]["max_length"]
    assert not (tmp_path / "ray" / ".checkpoints").exists()


def test_a_failing_task_is_named_the_others_saved_and_a_rerun_resumes(
    ray_cluster, three_tasks, small_options, tiny_bb, tmp_path
):
    from scoreplex.cluster.train import RayTrainError, RayTrainResources, train_suite_ray

    options = small_options("head")
    out = tmp_path / "suite"
    bad = list(three_tasks)[1]
    blocker = out / ".checkpoints" / bad
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the task's checkpoint folder goes: its training fails", encoding="utf-8")
    failed: list[str] = []
    with pytest.raises(RayTrainError) as info:
        train_suite_ray(
            three_tasks,
            out,
            options,
            backbone=tiny_bb,
            resources=RayTrainResources(retries=1),
            on_task_failed=lambda t, error: failed.append(t),
        )
    assert failed == [bad]
    assert list(info.value.failed) == [bad]
    assert bad in str(info.value) and "re-run" in str(info.value)
    assert "FileExistsError" in info.value.failed[bad]
    assert sorted(Suite.open(out).task_ids) == sorted(t for t in three_tasks if t != bad)

    blocker.unlink()
    done: list[str] = []
    suite = train_suite_ray(three_tasks, out, options, backbone=tiny_bb, on_task_done=lambda r: done.append(r.task_id))
    assert done == [bad]  # only the failed task is trained again
    assert sorted(suite.task_ids) == sorted(three_tasks)

    done.clear()
    train_suite_ray(three_tasks, out, options, backbone=tiny_bb, on_task_done=lambda r: done.append(r.task_id))
    assert done == []


def test_joint_methods_refuse_ray(three_tasks, small_options, tmp_path):
    from scoreplex.cluster.train import train_suite_ray

    with pytest.raises(ConfigError, match="jointly"):
        train_suite_ray(three_tasks, tmp_path / "x", small_options("cross-item"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("field", "value"), [("cpus_per_task", 0), ("memory_mb", 0), ("memory_mb", 1.5), ("retries", -1)]
)
def test_bad_ray_resources_raise_config_errors(field, value):
    from scoreplex.cluster.train import RayTrainResources

    with pytest.raises(ConfigError, match=field):
        RayTrainResources(**{field: value})


@pytest.mark.parametrize("method", ["exact", "entropic"])
def test_gw_matrix_on_ray_equals_the_local_one(ray_cluster, method):
    from scoreplex.cluster.gw import ray_gw_pairs
    from scoreplex.merging.gromov import GWSettings, gw_matrix

    rng = np.random.default_rng(0)
    features = {f"t{i}": rng.normal(size=(25 + 5 * i, 6)) + i for i in range(4)}
    settings = GWSettings(method=method, epsilon=0.1)
    local = gw_matrix(features, settings, progress=False)
    remote = gw_matrix(features, settings, progress=False, pair_map=ray_gw_pairs("local"))
    assert np.array_equal(remote.distances, local.distances)
    assert np.all(local.distances[~np.eye(4, dtype=bool)] > 0)
    assert [(p["a"], p["b"], p["distance"]) for p in remote.pairs] == [
        (p["a"], p["b"], p["distance"]) for p in local.pairs
    ]


def test_cli_train_with_ray(ray_cluster, tmp_path, tiny_backbone_path):
    from tests.test_cli import flat, invoke, label_args

    from scoreplex.data.demo import demo_specs, write_demo

    files = write_demo(tmp_path / "data", n_train=30, n_test=5)
    common = ["--backbone", tiny_backbone_path, "--epochs", 1, "--tasks", files["tasks"], *label_args()]
    out = tmp_path / "suite"
    result = invoke("train", files["train"], "--out", out, "--method", "head", "--ray", "local", *common)
    assert result.exit_code == 0, result.output
    assert "suite written to" in result.output
    assert sorted(Suite.open(out).task_ids) == sorted(s.id for s in demo_specs())
    refused = invoke(
        "train", files["train"], "--out", tmp_path / "x", "--method", "cross-item", "--ray", "local", *common
    )
    assert refused.exit_code == 2
    assert "jointly" in flat(refused.output)


def test_cli_merge_with_ray_gives_the_local_gw_matrix(ray_cluster, sequential_suite, demo_files, tmp_path):
    from tests.test_cli import invoke

    ids = Suite.open(sequential_suite, verify=False).task_ids
    with demo_files["train"].open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    data = tmp_path / "train.csv"  # the suite's tasks only
    with data.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["task"] in ids)
    common = ["--groups", 2, "--cap", 30, "--gw", "exact", "--quantize", 0, "--no-balanced"]
    reports = {}
    for name, extra in (("local", []), ("ray", ["--ray", "local"])):
        result = invoke("merge", sequential_suite, data, tmp_path / name, *common, *extra)
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((tmp_path / name / "report" / "report.json").read_text(encoding="utf-8"))
    assert reports["ray"]["gw"]["distances"] == reports["local"]["gw"]["distances"]
    assert reports["ray"]["plan"]["groups"] == reports["local"]["plan"]["groups"]
