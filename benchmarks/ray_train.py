"""Ray training vs the sequential path on a small real job: the same suite, and the wall time with 1 and 2 workers.

    python benchmarks/ray_train.py --out runs/ray/train.json                  # 4 ASAP-SAS items x 150, LoRA, 1 epoch
    python benchmarks/ray_train.py --items 1,2 --per-item 40 --out /tmp/t.json  # a smoke run

Trains the same items three times from scratch with the packaged MiniLM: ``train_suite`` here (torch on every
core), then ``train_suite_ray`` on a local Ray cluster of all the cores with 1 worker (each task gets every core as
its torch threads) and with as many workers as cores (1 core and 1 thread each). Ray's worker processes are started
(and import torch and scoreplex) before the timed runs; that start-up is reported on its own. Each Ray suite is
compared with the sequential one: the module files' hashes, and the predicted scores on held-out test responses.
With different torch thread counts the float sums may differ in the last bits (then the hashes differ while the
predictions usually agree); the run records which. ``--sequential-twice`` times the sequential path again at the
end, so that a change in the machine's load between the runs shows.

Writes the figures, the command and the machine to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _common import whole_numbers
from scoreplex.backbone import Backbone
from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.dataset import TaskData
from scoreplex.suite import Suite, write_json_atomic
from scoreplex.training.suite import TrainOptions, default_config


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/ray/train.json", help="JSON file for the figures")
    ap.add_argument("--work", default="runs/ray/train-work", help="folder for the three suites (emptied first)")
    ap.add_argument("--items", default="1,2,5,6", type=whole_numbers, help="comma-separated ASAP-SAS item numbers")
    ap.add_argument("--per-item", type=int, default=150, help="training responses per item (seeded subsample)")
    ap.add_argument("--test-per-item", type=int, default=50, help="test responses per item for the predictions")
    ap.add_argument("--method", default="lora", help="a per-task method: lora, head or full")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas)")
    ap.add_argument("--cores", type=int, default=0, help="CPUs of the local Ray cluster (0: this machine's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sequential-twice",
        action="store_true",
        help="time the sequential path again after the Ray runs (shows drift in the machine's load)",
    )
    return ap.parse_args(argv)


def subsample(data: dict[str, TaskData], n: int, seed: int) -> dict[str, TaskData]:
    """A seeded uniform subsample of at most ``n`` responses per task, in file order."""
    rng = np.random.default_rng(seed)
    return {t: d.subset(np.sort(rng.choice(len(d), min(n, len(d)), replace=False))) for t, d in data.items()}


def module_hashes(root: Path) -> dict[str, str]:
    suite = Suite.open(root, verify=False)
    return {t: suite.manifest["tasks"][t]["files"]["module.safetensors"] for t in suite.task_ids}


def predictions(root: Path, bb: Backbone, test: dict[str, TaskData]) -> dict[str, list]:
    from scoreplex.scorer import SuiteScorer

    scorer = SuiteScorer(root, bb)
    return {t: scorer.predict(t, d.texts, d.ids).labels.tolist() for t, d in test.items()}


def warm_up_workers(ray, n: int) -> float:
    """Start ``n`` Ray worker processes and import what a training task imports; returns the seconds it took."""

    def load() -> int:
        import scoreplex.cluster.train  # noqa: F401 - torch, transformers, scoreplex's training code

        return os.getpid()

    t0 = time.perf_counter()
    remote = ray.remote(load).options(num_cpus=1)
    pids = set(ray.get([remote.remote() for _ in range(4 * n)]))
    seconds = time.perf_counter() - t0
    print(f"Ray: {len(pids)} worker process(es) started in {seconds:.1f} s", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import torch

    from scoreplex.cluster import connect
    from scoreplex.cluster.train import RayTrainResources, train_suite_ray
    from scoreplex.training.suite import train_suite

    cores = args.cores or os.cpu_count() or 1
    items = args.items
    train = subsample(load_asap_sas(args.data, split="train", items=items), args.per_item, args.seed)
    test = subsample(load_asap_sas(args.data, split="test", items=items), args.test_per_item, args.seed)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)  # every run trains from scratch
    torch.set_num_threads(cores)
    bb = Backbone.load(args.backbone)
    options = TrainOptions(
        method=args.method,
        backbone=args.backbone,
        config=default_config(args.method, epochs=args.epochs, seed=args.seed),
        progress=False,
    )

    def sequential(name: str) -> dict:
        t0 = time.perf_counter()
        train_suite(train, work / name, options, backbone=bb)
        seconds = round(time.perf_counter() - t0, 2)
        print(f"{name}: {seconds} s", flush=True)
        return {"threads": cores, "seconds": seconds}

    runs = {"sequential": sequential("sequential")}

    ray = connect("local", num_cpus=cores)
    startup = warm_up_workers(ray, cores)
    for workers in sorted({1, min(2, cores), cores}):
        name = f"ray_{workers}_worker{'s' if workers > 1 else ''}"
        resources = RayTrainResources(cpus_per_task=cores / workers)
        t0 = time.perf_counter()
        train_suite_ray(train, work / name, options, resources=resources, backbone=bb)
        runs[name] = {"workers": workers, "threads": resources.threads, "seconds": round(time.perf_counter() - t0, 2)}
        print(f"{name}: {runs[name]['seconds']} s", flush=True)
    ray.shutdown()
    if args.sequential_twice:
        runs["sequential_again"] = sequential("sequential_again")

    reference_hashes = module_hashes(work / "sequential")
    reference_preds = predictions(work / "sequential", bb, test)
    for name, run in runs.items():
        run["speedup_vs_sequential"] = round(runs["sequential"]["seconds"] / run["seconds"], 3)
        if name.startswith("ray_"):
            run["identical_modules"] = module_hashes(work / name) == reference_hashes
            run["identical_predictions"] = predictions(work / name, bb, test) == reference_preds
    ray_runs = [r for n, r in runs.items() if n.startswith("ray_")]
    result = {
        "command": "python benchmarks/ray_train.py " + shlex.join(argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}",
        "job": {
            "items": [f"asap-{i}" for i in items],
            "train_per_item": args.per_item,
            "test_per_item": args.test_per_item,
            "method": args.method,
            "epochs": args.epochs,
            "backbone": args.backbone,
            "seed": args.seed,
            "ray_cluster_cpus": cores,
        },
        "ray_worker_startup_seconds": round(startup, 2),
        "runs": runs,
        "ray_train_identical": all(r["identical_predictions"] for r in ray_runs),
        "ray_train_identical_modules": all(r["identical_modules"] for r in ray_runs),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(f"written to {out}", flush=True)
    return result


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
