"""Engine benchmark: scoreplex's shared-backbone engine against PEFT and per-task full models, side by side in one run.

    python benchmarks/engine.py --suite runs/asap-sas/lora --full-suite runs/asap-sas/full --out docs/results

Every system scores the very same batches of real ASAP-SAS test responses, in its OWN subprocess (this script with
``--worker``), so its peak RSS (the process's ``VmHWM``) is that system's alone:

  plain           the backbone forward + mean pooling, no adapters, no heads: the physical limit
  engine          scoreplex Engine, PyTorch, per-row LoRA gathered (the default), for 10 / 100 / 1,000 tasks
  engine-grouped  the same with the grouped per-row LoRA
  onnx-fp32       scoreplex OnnxEngine: one exported graph, LoRA tables as inputs
  onnx-int8       the same graph quantised to static int8 (activation scales calibrated on training responses)
  peft-mixed      one PeftModel holding every task's adapter (load_adapter), mixed batches via ``adapter_names``
  peft-switch     the same model, ``set_adapter`` per task sub-batch (the 001 paper's dynamic loading)
  full            one full fine-tuned model per task, all resident, rows grouped per task (the usual practice)

Batches: each row is a random test response of a random real item; its task is then drawn uniformly among the tasks
derived from that item (the item itself and its synthetic copies), so the task mix is uniform over N tasks and every
task count and system sees the same texts. Beyond the real tasks, tasks are synthesised once into ``--work/suite``
(reused while the real suite is unchanged): task i copies real task i mod R with A and B perturbed by
``--perturb`` x their std (seeded), written with scoreplex's Suite API so the store loads real files with real hashes.

Per system and task count: throughput (responses/s over the timed batches, tokenisation to labels included), p50 /
p99 batch latency, peak RSS, bytes on disk, setup time, cold task load (one task module from disk into the running
system: engine = AdapterStore load of an evicted task; PEFT = delete_adapter then load_adapter + its head; full =
one model from the suite) and warm switch (median time of a one-response call for task B right after a call for
task A, minus that of a call for A right after A: both tasks resident). The engine, ONNX fp32 and ONNX int8 also score
every test response of the real items once, for the mean QWK per backend.

Time (estimated, 2 cores, 2 threads): with the defaults (20 timed + 2 warm-up batches of 32, tasks 10/100/1,000,
ONNX and grouped at 10, PEFT at 10/100; 12 workers) about 8-12 minutes. Random ASAP-SAS batches pad to ~136 tokens,
where MiniLM runs ~55 responses/s, so a batch costs ~0.6 s per system and each extra timed batch ~8 s over all
systems; ~5 min is fixed (imports and loading per worker, two ONNX exports, three QWK passes over 5,224 responses,
synthesising 990 tasks on the first run). Writes ``engine.json`` and ``engine.md`` into ``--out``.

``--qwk-only`` (about 3 min) re-scores the test set with the engine, ONNX fp32 and ONNX int8 after the LoRA suite
changed (new decoding, re-training) and replaces only the QWK table and the int8 QWK target of the existing
``engine.json``; the timings stay, and the report names the run each part came from.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import whole_numbers

RESULT_PREFIX = "SCOREPLEX-BENCH-RESULT "
SYSTEM_LABELS = {
    "plain": "plain backbone (no adapters), whole batch padded",
    "plain-packed": "plain backbone (no adapters), token-budget micro-batches",
    "engine": "scoreplex engine, PyTorch gathered",
    "engine-grouped": "scoreplex engine, PyTorch grouped",
    "onnx-fp32": "scoreplex engine, ONNX fp32",
    "onnx-int8": "scoreplex engine, ONNX int8",
    "peft-mixed": "PEFT adapter_names (mixed batch)",
    "peft-switch": "PEFT set_adapter per task",
    "full": "full fine-tune per task, resident",
}
TARGETS = [
    ("engine_vs_plain_10", ">=", 0.95, "engine throughput on a 10-task mix / plain backbone, same micro-batches"),
    ("engine_vs_peft_mixed_10", ">=", 1.3, "engine throughput / PEFT adapter_names, 10 tasks"),
    ("tasks_1000_vs_10", ">=", 0.9, "engine throughput with 1,000 tasks / with 10 tasks"),
    ("cold_load_ms", "<=", 5.0, "cold load of one task module (engine, median ms)"),
    ("rss_100_tasks_vs_backbone", "<=", 1.2, "engine peak RSS serving 100 tasks / plain backbone"),
    ("onnx_int8_speedup", ">=", 1.7, "ONNX int8 throughput / PyTorch engine, 10 tasks"),
    ("onnx_int8_qwk_delta", "abs<=", 0.005, "ONNX int8 mean test QWK - PyTorch engine"),
]

GOAL_TEXT = {">=": "≥ ", "<=": "≤ ", "abs<=": "within ±"}
COUNT_OPTION = {
    "engine": "--tasks",
    "engine-grouped": "--grouped-tasks",
    "onnx-fp32": "--onnx-tasks",
    "onnx-int8": "--onnx-tasks",
    "peft-mixed": "--peft-tasks",
    "peft-switch": "--peft-tasks",
}
"""The option that sets each system's task counts (named when a figure is not measured)."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb() -> tuple[float, str]:
    """This process's peak resident set size in MB, and where it was read.

    ``VmHWM`` of ``/proc/self/status``, not ``ru_maxrss``: Linux carries the parent's high-water mark into a child's
    ``ru_maxrss`` across fork + exec (a 600 MB parent makes a bare ``python -c`` child report 610 MB; VmHWM 9 MB), so
    ``ru_maxrss`` would report this benchmark's parent process, not the system under test. Elsewhere: ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM"  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss"


def _counts(counts: list[int]) -> list[int]:
    """The task counts of one option (parsed by :func:`whole_numbers`), each once, in increasing order."""
    return sorted(set(counts))


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="runs/asap-sas/lora", help="the real LoRA suite (ASAP-SAS items)")
    ap.add_argument("--full-suite", default="runs/asap-sas/full", help="per-task full fine-tunes (skipped if absent)")
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas)")
    ap.add_argument("--out", default="docs/results", help="folder for engine.{json,md}")
    ap.add_argument("--work", default="runs/bench-engine", help="synthetic suite, ONNX exports, PEFT folders")
    ap.add_argument("--backbone", default=None, help="backbone name or folder (default: the suite's)")
    ap.add_argument(
        "--systems", default=",".join(SYSTEM_LABELS), help="comma-separated, from: " + ", ".join(SYSTEM_LABELS)
    )
    ap.add_argument(
        "--tasks", default="10,100,1000", type=whole_numbers, help="task counts for the PyTorch engine (gathered)"
    )
    ap.add_argument("--grouped-tasks", default="10", type=whole_numbers, help="task counts for the grouped engine")
    ap.add_argument(
        "--onnx-tasks",
        default="10",
        type=whole_numbers,
        help="task counts for ONNX fp32 and int8 (100,1000 if time allows)",
    )
    ap.add_argument(
        "--peft-tasks",
        default="10,100",
        type=whole_numbers,
        help="task counts for PEFT (1000: ~1-2 min of load_adapter)",
    )
    ap.add_argument("--batches", type=int, default=20, help="timed batches per system (20: ~8-12 min in all)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cold-samples", type=int, default=20, help="tasks whose cold load is timed (full: at most 3)")
    ap.add_argument("--switch-reps", type=int, default=20, help="repetitions of the warm-switch measurement")
    ap.add_argument("--perturb", type=float, default=0.1, help="noise on synthetic A/B, x the tensor's std")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads = ONNX Runtime intra-op (0: all cores)")
    ap.add_argument("--no-qwk", action="store_true", help="skip the test-set QWK passes (engine / ONNX fp32 / int8)")
    ap.add_argument(
        "--qwk-only",
        action="store_true",
        help="only the test-set QWK passes (engine / ONNX fp32 / int8 on the suite's real tasks; the task-count "
        "options do not apply): refreshes the QWK table and the int8 QWK target of an existing --out/engine.json, "
        "keeping its timings (and saying which run made which)",
    )
    ap.add_argument("--worker-timeout", type=int, default=1800, help="seconds before a worker is killed")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEM_LABELS]
    if unknown:
        ap.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEM_LABELS)}")
    if args.batches < 1 or args.warmup < 0 or args.batch_size < 1:
        ap.error("--batches and --batch-size must be >= 1 and --warmup >= 0")
    args.threads = args.threads or os.cpu_count() or 1
    return args


# ======================================================================================================================
# Preparation (parent process): synthetic tasks, batches, PEFT adapter folders, ONNX exports
# ======================================================================================================================
def task_order(real_ids: Sequence[str], n: int) -> list[str]:
    """The first ``n`` task ids of the benchmark suite: the real tasks, then ``synth-{i}`` copied from real i mod R."""
    return [real_ids[i] if i < len(real_ids) else f"synth-{i:04d}" for i in range(n)]


def synthesise_suite(real, root: Path, n: int, *, seed: int, perturb: float):
    """A suite at ``root`` holding the real tasks and synthetic ones up to ``n`` tasks (reused while its source holds).

    Task ``i >= R`` copies real task ``i mod R`` (spec, config, head, decoding, stacked lexical model) with every
    LoRA tensor ``W`` replaced by ``W + perturb * std(W) * z``, ``z ~ N(0, 1)`` from a generator seeded by
    ``(seed, i)``, so a task's weights do not depend on how many tasks were asked for. Written through
    :meth:`Suite.add_task` (real files, real hashes).
    """
    import torch

    from scoreplex.progress import progress_bar
    from scoreplex.suite import Suite
    from scoreplex.tasks import TaskSpec

    source = {
        "tasks": {t: real.manifest["tasks"][t]["files"] for t in real.task_ids},  # module and task.json hashes
        "backbone": real.manifest["backbone"]["sha256"],
        "pooling": real.manifest["pooling"],
        "max_length": real.manifest["max_length"],
        "seed": seed,
        "perturb": perturb,
    }
    marker = root / "bench-source.json"
    if root.exists() and (not marker.is_file() or json.loads(marker.read_text(encoding="utf-8")) != source):
        _log(f"  {root} was built from another suite or seed: rebuilding it")
        shutil.rmtree(root)
    suite = Suite.create(
        root,
        method=real.method,
        backbone=real.manifest["backbone"],
        pooling=real.manifest["pooling"],
        max_length=real.manifest["max_length"],
    )
    marker.write_text(json.dumps(source, indent=1), encoding="utf-8")
    real_ids = real.task_ids
    ids = task_order(real_ids, n)
    missing = [(i, t) for i, t in enumerate(ids) if not suite.has_task(t)]
    modules: dict[str, tuple[dict, dict]] = {}
    with progress_bar(sys.stderr.isatty() and len(missing) > 20) as bar:
        job = bar.add_task("synthesising tasks", total=len(missing))
        for i, task_id in missing:
            src = real_ids[i % len(real_ids)]
            if src not in modules:
                info, tensors = real.load_module(src)
                if info.get("lexical") is not None:  # the stacked lexical model's tensors live beside the neural ones
                    tensors = {**tensors, **real.module_tensors(src, lexical=True)}
                modules[src] = info, tensors
            info, tensors = modules[src]
            if i >= len(real_ids):
                gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
                tensors = {
                    k: v + perturb * v.std() * torch.randn(v.shape, generator=gen, dtype=v.dtype)
                    if k.startswith("lora.")
                    else v
                    for k, v in tensors.items()
                }
            spec = dict(info["spec"], id=task_id, metadata={**info["spec"].get("metadata", {}), "copied_from": src})
            suite.add_task(
                TaskSpec.from_dict(spec),
                tensors,
                info["config"],
                {"synthetic": i >= len(real_ids)},
                decoding=info.get("decoding"),  # scored as deployed: cut points, temperature, routing
                lexical=info.get("lexical"),  # and the stacked lexical model where the task has one
            )
            bar.update(job, advance=1)
    return suite, ids


def make_batches(
    texts: Sequence[Sequence[str]], ids: Sequence[str], counts: Sequence[int], *, n_batches: int, size: int, seed: int
) -> dict[int, list[list[tuple[str, str]]]]:
    """``{N: batches of (task id, text)}``: the same texts for every N, tasks uniform over the first N ids.

    ``texts[r]`` are the test responses of real task r. Row: r uniform, a response of r uniform, then a task uniform
    among ``{i < N : i mod R = r}`` (uniform over all N when R divides N).
    """
    r_count = len(texts)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_batches * size):
        r = int(rng.integers(r_count))
        rows.append((r, texts[r][int(rng.integers(len(texts[r])))], float(rng.random())))
    out = {}
    for n in counts:
        derived = [[i for i in range(r, n, r_count)] for r in range(r_count)]
        pairs = [(ids[derived[r][int(u * len(derived[r]))]], text) for r, text, u in rows]
        out[n] = [pairs[b * size : (b + 1) * size] for b in range(n_batches)]
    return out


def write_peft_folders(suite, task_ids: Sequence[str], root: Path) -> None:
    """Each task as a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) plus its head.

    A folder is rewritten unless its ``head.json`` records the SHA-256 of the task's current module.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    from scoreplex.suite import MODULE_FILE

    for task_id in task_ids:
        folder = root / task_id
        digest = suite.manifest["tasks"][task_id]["files"][MODULE_FILE]
        done = folder / "head.json"
        if done.is_file() and json.loads(done.read_text(encoding="utf-8")).get("module_sha256") == digest:
            continue
        info, tensors = suite.load_module(task_id)
        cfg = info["config"]
        folder.mkdir(parents=True, exist_ok=True)
        lora_cfg = LoraConfig(
            r=int(cfg["lora_r"]),
            lora_alpha=cfg["lora_alpha"],
            lora_dropout=0.0,
            target_modules=list(cfg["lora_targets"]),
            bias="none",
        )
        lora_cfg.save_pretrained(str(folder))
        save_file(
            {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}, str(folder / "adapter_model.safetensors")
        )
        save_file({k[5:]: v for k, v in tensors.items() if k.startswith("head.")}, str(folder / "head.safetensors"))
        head = {"spec": info["spec"], "head_hidden": cfg.get("head_hidden", 0), "module_sha256": digest}
        done.write_text(json.dumps(head), encoding="utf-8")  # last: marks the folder complete


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ======================================================================================================================
# Systems (worker process): load N tasks, score a batch of (task, text), load one task cold
# ======================================================================================================================
def _groups(task_ids: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p, t in enumerate(task_ids):
        out.setdefault(t, []).append(p)
    return out


def _tokens(tokenizer, texts: Sequence[str], max_length: int) -> dict:
    """One padded batch ``{input_ids (B, T), attention_mask (B, T)}``, truncated as the engine truncates."""
    from scoreplex.encoding import collate, encode_texts

    return collate(encode_texts(tokenizer, texts, max_length), range(len(texts)))


def _labels(logits, class_counts: Sequence[int]) -> np.ndarray:
    """Predicted class per dimension ``(B, D)`` from concatenated logits ``(B, sum K)``."""
    from scoreplex.heads import probabilities

    return np.stack([p.argmax(1).numpy() for p in probabilities(logits, class_counts)], axis=1)


class System:
    """One way of serving many tasks. ``spec`` is the worker's JSON spec (paths, sizes, threads)."""

    modules: tuple[str, ...] = ("scoreplex.scorer",)
    """Imported before the setup clock starts (import time is a per-process constant, not loading work)."""
    torch_model = True
    """Whether the system builds a transformers model (whose class transformers imports lazily; see worker)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def load(self, task_ids: Sequence[str]) -> None:
        raise NotImplementedError

    def score(self, task_ids: Sequence[str], texts: Sequence[str]) -> None:
        """Score one batch end to end: tokens in, a label per row and rubric dimension out."""
        raise NotImplementedError

    def cold_load(self, task_id: str) -> float | None:
        """Seconds to bring one resident task back from disk into the running system (None: no tasks)."""
        return None

    def predict(self, task_id: str, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not score test sets")


class PlainForward(System):
    """The backbone alone: tokenise, one forward, mean pooling. No adapters and no heads."""

    def load(self, task_ids):
        from scoreplex.backbone import Backbone

        self.bb = Backbone.load(self.spec["backbone"])

    def score(self, task_ids, texts):
        import torch

        from scoreplex.backbone import pool
        from scoreplex.encoding import collate, encode_texts, token_batches

        if self.spec["system"] == "plain":  # the whole batch in one pass, padded to its longest row
            batches = [_tokens(self.bb.tokenizer, texts, self.spec["max_length"])]
        else:  # the same length-sorted token-budget micro-batches the engine uses
            enc = encode_texts(self.bb.tokenizer, texts, self.spec["max_length"])
            batches = [collate(enc, idx) for idx in token_batches(enc.lengths, max_rows=len(texts))]
        with torch.no_grad():
            for batch in batches:
                out = self.bb.encoder(**batch)
                pool(out.last_hidden_state, batch["attention_mask"], self.spec["pooling"])  # (B, H)


class EngineSystem(System):
    """scoreplex's :class:`Engine` (PyTorch) or :class:`OnnxEngine`, every task preloaded (no budget)."""

    modules = ("scoreplex.engine",)

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        if spec["system"].startswith("onnx"):
            self.modules = ("scoreplex.engine.onnx_runtime", "onnxruntime")
            self.torch_model = False

    def load(self, task_ids):
        size = self.spec["batch_size"]
        if self.spec["system"].startswith("onnx"):
            from scoreplex.engine.onnx_runtime import OnnxEngine

            self.engine = OnnxEngine(
                self.spec["suite"], self.spec["onnx_dir"], batch_size=size, intra_op_threads=self.spec["threads"]
            )
        else:
            from scoreplex.engine import Engine

            impl = "grouped" if self.spec["system"] == "engine-grouped" else "gathered"
            self.engine = Engine(self.spec["suite"], self.spec["backbone"], batch_size=size, lora_impl=impl)
        self.engine.preload(task_ids)

    def score(self, task_ids, texts):
        self.engine.score(list(zip(task_ids, texts, strict=True)))

    def cold_load(self, task_id):
        self.engine.store.evict(task_id)
        t0 = time.perf_counter()
        self.engine.store.get(task_id)
        return time.perf_counter() - t0

    def predict(self, task_id, texts):
        return self.engine.predict(task_id, texts).labels


class PeftSystem(System):
    """One PeftModel holding every task's adapter (PEFT folders via ``load_adapter``) and a head per task.

    ``peft-mixed`` runs a batch in one pass with ``adapter_names`` (eval mode only); ``peft-switch`` groups the batch
    by task and runs each sub-batch after ``set_adapter``.
    """

    modules = ("scoreplex.scorer", "peft")

    def load(self, task_ids):
        from peft import PeftModel

        from scoreplex.backbone import Backbone

        self.bb = Backbone.load(self.spec["backbone"])
        self.root = Path(self.spec["peft_dir"])
        self.heads: dict[str, Any] = {}
        first, *rest = task_ids
        self.model = PeftModel.from_pretrained(
            self.bb.encoder, str(self.root / first), adapter_name=first, is_trainable=False
        )
        self._head(first)
        self.initial_loads = [self._load(t) for t in rest]
        self.model.eval()

    def _head(self, task_id: str) -> None:
        from safetensors.torch import load_file

        from scoreplex.heads import ScoringHead
        from scoreplex.tasks import TaskSpec

        info = json.loads((self.root / task_id / "head.json").read_text(encoding="utf-8"))
        spec = TaskSpec.from_dict(info["spec"])
        head = ScoringHead(self.bb.hidden, spec.class_counts, hidden=info["head_hidden"], dropout=0.0)
        head.load_state_dict(load_file(str(self.root / task_id / "head.safetensors")))
        self.heads[task_id] = head.eval()

    def _load(self, task_id: str) -> float:
        t0 = time.perf_counter()
        self.model.load_adapter(str(self.root / task_id), adapter_name=task_id, is_trainable=False)
        self._head(task_id)
        return time.perf_counter() - t0

    def _pooled(self, texts, adapter_names=None):
        from scoreplex.backbone import pool

        batch = _tokens(self.bb.tokenizer, texts, self.spec["max_length"])
        extra = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
        out = self.model(**batch, **extra)
        return pool(out.last_hidden_state, batch["attention_mask"], self.spec["pooling"])  # (B, H)

    def score(self, task_ids, texts):
        import torch

        with torch.no_grad():
            if self.spec["system"] == "peft-mixed":
                pooled = self._pooled(texts, task_ids)  # ONE pass, PEFT's per-row adapters
                for t, rows in _groups(task_ids).items():
                    _labels(self.heads[t](pooled[rows]), self.heads[t].class_counts)
                return
            for t, rows in _groups(task_ids).items():
                self.model.set_adapter(t)
                pooled = self._pooled([texts[i] for i in rows])
                _labels(self.heads[t](pooled), self.heads[t].class_counts)

    def cold_load(self, task_id):
        self.model.delete_adapter(task_id)
        del self.heads[task_id]
        seconds = self._load(task_id)
        self.model.eval()
        return seconds


class FullModels(System):
    """One full fine-tuned model per task (scoreplex's ``full`` suite via ``Method.load``), all resident."""

    def load(self, task_ids):
        from scoreplex.backbone import Backbone
        from scoreplex.suite import Suite

        self.suite = Suite.open(self.spec["full_suite"], verify=False)  # each module is verified as it loads
        bb = Backbone.load(self.spec["backbone"])
        self.tokenizer, self.hidden = bb.tokenizer, bb.hidden
        self.max_length = int(self.suite.manifest["max_length"])
        self.models: dict[str, Any] = {}
        template = bb.encoder  # Method.load copies a template encoder, then overwrites every weight
        for t in task_ids:
            self.models[t] = self._read(t, template)
            template = self.models[task_ids[0]].encoder  # the base encoder is then no longer held
        del bb
        gc.collect()

    def _read(self, task_id: str, template):
        from scoreplex.methods import get_method

        info, tensors = self.suite.load_module(task_id)
        spec = self.suite.spec(task_id)
        return get_method("full").load(
            template, self.hidden, spec, info["config"], tensors, self.suite.manifest["pooling"]
        )

    def score(self, task_ids, texts):
        import torch

        with torch.no_grad():
            for t, rows in _groups(task_ids).items():
                model = self.models[t]
                batch = _tokens(self.tokenizer, [texts[i] for i in rows], self.max_length)
                _labels(model(**batch), model.head.class_counts)

    def cold_load(self, task_id):
        others = [m for t, m in self.models.items() if t != task_id]
        if not others:
            return None  # one task: no template encoder to copy without reloading the backbone
        template = others[0].encoder
        del self.models[task_id]
        gc.collect()
        t0 = time.perf_counter()
        self.models[task_id] = self._read(task_id, template)
        return time.perf_counter() - t0


SYSTEMS: dict[str, type[System]] = {
    "plain": PlainForward,
    "plain-packed": PlainForward,
    "engine": EngineSystem,
    "engine-grouped": EngineSystem,
    "onnx-fp32": EngineSystem,
    "onnx-int8": EngineSystem,
    "peft-mixed": PeftSystem,
    "peft-switch": PeftSystem,
    "full": FullModels,
}


def _warm_switch(system: System, task_ids: Sequence[str], text: str, reps: int) -> float | None:
    """Median extra seconds of a one-response call for task B right after A, over one for A right after A."""
    if len(task_ids) < 2 or reps < 1:
        return None
    a, b = task_ids[0], task_ids[1]
    same, switch = [], []
    for _ in range(reps):
        system.score([a], [text])
        t0 = time.perf_counter()
        system.score([a], [text])
        same.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        system.score([b], [text])
        switch.append(time.perf_counter() - t0)
    return float(np.median(switch) - np.median(same))


def _test_qwk(system: System, spec: dict[str, Any]) -> dict[str, Any]:
    """Score every test response of the real tasks once; per-task QWK and the mean."""
    from scoreplex.data.asap_sas import load_asap_sas
    from scoreplex.metrics import evaluate_task

    data = load_asap_sas(spec["data"], split="test", items=spec["real_ids"])
    t0 = time.perf_counter()
    per_task = {}
    for task_id, d in data.items():
        per_task[task_id] = float(evaluate_task(d.spec, d.labels, system.predict(task_id, d.texts))["qwk"])
    return {
        "tasks": per_task,
        "mean": float(np.mean(list(per_task.values()))),
        "n": sum(len(d) for d in data.values()),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _import_model_code(backbone: str) -> None:
    """Import the backbone's model class now: transformers imports it lazily on the first load, which would put
    seconds of imports into the setup time of whichever system loads a model first."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    from scoreplex.backbone import resolve_backbone

    MODEL_MAPPING[type(AutoConfig.from_pretrained(str(resolve_backbone(backbone))))]


def worker(spec_path: str) -> dict[str, Any]:
    """Measure one system at one task count (in this process only) and print the result as one JSON line."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import torch

    torch.set_num_threads(spec["threads"])
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")  # PEFT, on a cold reload
    label = f"{spec['system']} x{spec['n_tasks']}"
    batches = [[tuple(p) for p in b] for b in json.loads(Path(spec["batches"]).read_text(encoding="utf-8"))]
    system = SYSTEMS[spec["system"]](spec)
    for name in system.modules:
        importlib.import_module(name)
    if system.torch_model:
        _import_model_code(spec["backbone"])
    t0 = time.perf_counter()
    system.load(spec["task_ids"])
    setup = time.perf_counter() - t0
    if spec.get("qwk_only"):
        result = {"system": spec["system"], "n_tasks": spec["n_tasks"], "qwk": _test_qwk(system, spec)}
        _log(f"  [{label}] mean test QWK {result['qwk']['mean']:.4f} ({result['qwk']['seconds']:.0f} s)")
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return result
    _log(f"  [{label}] {len(spec['task_ids'])} tasks loaded in {setup:.1f} s; timing {len(batches)} batches")
    times = []
    for k, batch in enumerate(batches):
        tids, texts = zip(*batch, strict=True)
        t0 = time.perf_counter()
        system.score(list(tids), list(texts))
        if k >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    rows = sum(len(b) for b in batches[spec["warmup"] :])
    warm = _warm_switch(system, spec["task_ids"], batches[0][0][1], spec["switch_reps"])
    cold = [c for c in (system.cold_load(t) for t in spec["cold_ids"]) if c is not None]
    rss, rss_source = peak_rss_mb()
    result: dict[str, Any] = {
        "system": spec["system"],
        "n_tasks": spec["n_tasks"],
        "throughput": rows / sum(times),
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "peak_rss_mb": rss,
        "rss_source": rss_source,
        "setup_s": round(setup, 3),
        "cold_load_ms": float(np.median(cold) * 1e3) if cold else None,
        "cold_samples": len(cold),
        "warm_switch_ms": None if warm is None else warm * 1e3,
        "timed_batches": len(times),
        "torch_threads": torch.get_num_threads(),
    }
    initial = getattr(system, "initial_loads", None)
    if initial:
        result["initial_load_ms_median"] = float(np.median(initial) * 1e3)
    _log(
        f"  [{label}] {result['throughput']:.1f} responses/s, p50 {result['p50_ms']:.0f} ms, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB, cold load {_fmt(result['cold_load_ms'])} ms"
    )
    if spec.get("qwk"):
        result["qwk"] = _test_qwk(system, spec)  # after the RSS reading: the serving phase's peak is what is reported
        _log(f"  [{label}] mean test QWK {result['qwk']['mean']:.4f} ({result['qwk']['seconds']:.0f} s)")
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return result


def run_worker(spec: dict[str, Any], work: Path, timeout: int) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its stderr streams through, its result comes back on stdout."""
    path = work / "specs" / f"{spec['system']}-{spec['n_tasks']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"system": spec["system"], "n_tasks": spec["n_tasks"], "error": f"timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"system": spec["system"], "n_tasks": spec["n_tasks"], "error": f"worker exit code {proc.returncode}"}
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


# ======================================================================================================================
# Orchestration and report
# ======================================================================================================================
def _find(rows: list[dict], system: str, n: int | None = None) -> dict | None:
    for row in rows:
        if row["system"] == system and (n is None or row["n_tasks"] == n) and "error" not in row:
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _why_missing(rows: list[dict], system: str, n: int | None) -> str | None:
    """Why no measured row of ``system`` with ``n`` tasks (any count if None) exists; None when one does."""
    of_system = [r for r in rows if r["system"] == system]
    if not of_system:
        return f"not run: --systems excluded {system}"
    at_n = [r for r in of_system if n is None or r["n_tasks"] == n]
    if not at_n:
        return f"not run: {COUNT_OPTION.get(system, '--tasks')} excluded {n}"
    if all("error" in r for r in at_n):
        error = str(at_n[0]["error"]).splitlines()[0][:120] if str(at_n[0]["error"]).strip() else "no result"
        return f"failed: {system}" + (f" with {n} tasks" if n else "") + f" ({error})"
    return None


def summarise(rows: list[dict], counts: Sequence[int]) -> dict[str, Any]:
    """The issue's machine-readable figures; "10" / "1000" / "100" are the smallest / largest / 100-or-largest count.

    A figure whose rows did not run (left out by ``--systems`` or a count option, or failed) is None, never a
    stand-in: ``not_run`` maps it to why, e.g. ``"not run: --tasks excluded 1000"`` when the engine ran one task
    count only (the engine row against itself is no measurement of 1,000 tasks).
    """
    small, large = min(counts), max(counts)
    mid = 100 if 100 in counts else large
    not_run: dict[str, str] = {}

    def get(figure: str, system: str, n: int | None, key: str) -> Any:
        why = _why_missing(rows, system, n)
        if why is not None:
            not_run.setdefault(figure, why)
            return None
        return _find(rows, system, n).get(key)

    def ratio(figure: str, a: tuple[str, int | None, str], b: tuple[str, int | None, str]) -> float | None:
        top, bottom = get(figure, *a), get(figure, *b)
        return _ratio(top, bottom)

    def qwk(figure: str, system: str) -> float | None:
        scored = [r for r in rows if r["system"] == system and "qwk" in r and "error" not in r]
        if scored:
            return scored[0]["qwk"]["mean"]
        failed = [r for r in rows if r["system"] == system and "error" in r]
        why = _why_missing(rows, system, failed[0]["n_tasks"] if failed else None)
        not_run.setdefault(figure, why or f"not run: --no-qwk (no test-set QWK for {system})")
        return None

    engine_10 = ("engine", small, "throughput")
    figures = {
        # the plain forward with the engine's own length-aware micro-batching: what is left is the adapters' cost
        "engine_vs_plain_10": ratio("engine_vs_plain_10", engine_10, ("plain-packed", 0, "throughput")),
        "engine_vs_plain_whole_batch_10": ratio(
            "engine_vs_plain_whole_batch_10", engine_10, ("plain", 0, "throughput")
        ),
        "engine_vs_peft_mixed_10": ratio("engine_vs_peft_mixed_10", engine_10, ("peft-mixed", small, "throughput")),
        "tasks_1000_vs_10": None,
        "cold_load_ms": get("cold_load_ms", "engine", small, "cold_load_ms"),
        "rss_100_tasks_vs_backbone": ratio(
            "rss_100_tasks_vs_backbone", ("engine", mid, "peak_rss_mb"), ("plain", 0, "peak_rss_mb")
        ),
        "onnx_int8_speedup": ratio("onnx_int8_speedup", ("onnx-int8", small, "throughput"), engine_10),
        "onnx_int8_qwk_delta": None,
    }
    if large > small:
        figures["tasks_1000_vs_10"] = ratio("tasks_1000_vs_10", ("engine", large, "throughput"), engine_10)
    else:
        not_run["tasks_1000_vs_10"] = (
            "not run: --tasks excluded 1000" if 1000 not in counts else f"not run: --tasks gave one count ({small})"
        )
    engine_qwk, int8_qwk = qwk("onnx_int8_qwk_delta", "engine"), qwk("onnx_int8_qwk_delta", "onnx-int8")
    if engine_qwk is not None and int8_qwk is not None:
        figures["onnx_int8_qwk_delta"] = int8_qwk - engine_qwk
    for figure, value in figures.items():
        if value is None:
            not_run.setdefault(figure, "not measured")
        else:
            not_run.pop(figure, None)
    return {
        **figures,
        "summary_counts": {"small": small, "large": large, "rss": mid},
        "not_run": {k: not_run[k] for k in figures if k in not_run},
    }


def check_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its value and whether it is met; an unmeasured one has value and met None and ``why``."""
    out = []
    for key, op, bound, what in TARGETS:
        value = summary.get(key)
        met = None
        if value is not None:
            met = bool(value >= bound if op == ">=" else value <= bound if op == "<=" else abs(value) <= bound)
        target = {"key": key, "what": what, "target": f"{GOAL_TEXT[op]}{bound:g}", "value": value, "met": met}
        if value is None:
            target["why"] = summary.get("not_run", {}).get(key, "not measured")
        out.append(target)
    return out


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def plan(args, counts: dict[str, list[int]], n_real: int, has_full: bool) -> list[tuple[str, int, bool]]:
    """``(system, task count, score the test set)`` per worker, in run order."""
    out = []
    for system in SYSTEM_LABELS:
        if system not in args.systems:
            continue
        if system in ("plain", "plain-packed"):
            out.append((system, 0, False))
        elif system == "full":
            if has_full:
                out.append((system, n_real, False))
        else:
            wants_qwk = system in ("engine", "onnx-fp32", "onnx-int8") and not args.no_qwk
            out += [(system, n, wants_qwk and k == 0) for k, n in enumerate(counts[system])]
    return out


QWK_SYSTEMS = ("engine", "onnx-fp32", "onnx-int8")


def refresh_qwk(report: dict[str, Any], rows: list[dict], run: dict[str, Any]) -> dict[str, Any]:
    """``report`` (an earlier engine.json) with its test-QWK table, the int8 QWK figure and its target replaced by
    ``rows`` (``--qwk-only`` workers); the timings stay, and ``qwk_run`` names the run the QWK figures came from."""
    qwk = {r["system"]: r["qwk"] for r in rows if "qwk" in r}
    not_run = dict(report.get("not_run", {}))
    delta = None
    if "engine" in qwk and "onnx-int8" in qwk:
        delta = qwk["onnx-int8"]["mean"] - qwk["engine"]["mean"]
        not_run.pop("onnx_int8_qwk_delta", None)
    else:
        failed = "; ".join(f"{r['system']}: {r['error']}" for r in rows if "error" in r)
        not_run["onnx_int8_qwk_delta"] = f"failed: {failed}" if failed else "not run: --systems excluded it"
    summary = {**report, "onnx_int8_qwk_delta": delta, "not_run": not_run}
    return {**summary, "targets": check_targets(summary), "qwk": qwk, "qwk_run": run}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker)
    import torch

    from scoreplex.backbone import resolve_backbone
    from scoreplex.data.asap_sas import load_asap_sas
    from scoreplex.errors import ConfigError
    from scoreplex.suite import Suite, package_versions, write_json_atomic

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    real = Suite.open(args.suite)
    if real.method != "lora":
        raise ConfigError(f"--suite {args.suite} is a {real.method!r} suite; give the LoRA suite (method 'lora').")
    real_ids = real.task_ids
    test = load_asap_sas(args.data, split="test", items=real_ids)
    missing = [t for t in real_ids if t not in test]
    if missing:
        raise ConfigError(f"the suite's tasks {missing} have no ASAP-SAS test responses; train the suite on ASAP-SAS.")
    stored = real.manifest["backbone"]
    backbone = args.backbone or (stored["path"] if Path(stored["path"]).is_dir() else stored["name"])
    n_real = len(real_ids)
    earlier = out / "engine.json"
    if args.qwk_only:
        chosen, args.systems = args.systems, [s for s in QWK_SYSTEMS if s in args.systems]
        if not args.systems:
            raise ConfigError(f"--qwk-only scores {', '.join(QWK_SYSTEMS)}; --systems {','.join(chosen)} names none.")
        if not earlier.is_file():
            raise ConfigError(
                f"--qwk-only refreshes the QWK table of {earlier}, which does not exist; run the whole benchmark "
                "first (drop --qwk-only)."
            )
        if args.no_qwk:
            raise ConfigError("--qwk-only and --no-qwk contradict each other; give one.")
        try:
            earlier_report = json.loads(earlier.read_text(encoding="utf-8"))
            earlier_tasks = earlier_report["real_tasks"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{earlier} is not an engine benchmark report ({exc}); rerun the whole benchmark."
            ) from None
        if earlier_tasks != real_ids:
            raise ConfigError(
                f"{earlier} timed the tasks {earlier_tasks}; --suite holds {real_ids}. Run the whole benchmark."
            )
        args.tasks = args.onnx_tasks = [n_real]
    counts = {
        "engine": _counts(args.tasks),
        "engine-grouped": _counts(args.grouped_tasks),
        "onnx-fp32": _counts(args.onnx_tasks),
        "onnx-int8": _counts(args.onnx_tasks),
        "peft-mixed": _counts(args.peft_tasks),
        "peft-switch": _counts(args.peft_tasks),
    }
    all_counts = sorted({n for s, c in counts.items() if s in args.systems for n in c} | {n_real})
    if min(all_counts) < n_real:
        raise ConfigError(f"task counts {all_counts} must be >= the {n_real} real tasks (each real item stays in).")
    full_root = Path(args.full_suite)
    has_full = "full" in args.systems and (full_root / "manifest.json").is_file()
    if has_full:
        full_ids = Suite.open(full_root, verify=False).task_ids
        if sorted(full_ids) != sorted(real_ids):
            raise ConfigError(
                f"--full-suite holds tasks {full_ids} but --suite holds {real_ids}; give matching suites."
            )
    elif "full" in args.systems:
        _log(f"no full suite at {full_root}: the 'full' row is skipped")

    _log(f"[prepare] {n_real} real tasks; synthesising up to {max(all_counts)} tasks in {work / 'suite'}")
    t0 = time.perf_counter()
    bench, ids = synthesise_suite(real, work / "suite", max(all_counts), seed=args.seed, perturb=args.perturb)
    setup = {"synthesise_s": round(time.perf_counter() - t0, 1)}
    texts = [test[t].texts for t in real_ids]
    batch_sets = make_batches(
        texts, ids, all_counts, n_batches=args.warmup + args.batches, size=args.batch_size, seed=args.seed
    )
    for n, batches in batch_sets.items():
        (work / "batches").mkdir(exist_ok=True)
        (work / "batches" / f"{n}.json").write_text(json.dumps(batches), encoding="utf-8")
    peft_counts = [n for s in ("peft-mixed", "peft-switch") if s in args.systems for n in counts[s]]
    if peft_counts:
        t0 = time.perf_counter()
        write_peft_folders(bench, ids[: max(peft_counts)], work / "peft")
        setup["peft_folders_s"] = round(time.perf_counter() - t0, 1)
    onnx_dirs = {}
    for system in ("onnx-fp32", "onnx-int8"):
        if system in args.systems:
            from scoreplex.engine.onnx_export import export_onnx

            t0 = time.perf_counter()
            onnx_dirs[system] = work / system
            quantize, calibration = None, None
            if system == "onnx-int8":  # static INT8, calibrated on training responses (never the test ones)
                train = load_asap_sas(args.data, split="train", items=real_ids)
                quantize, calibration = "int8", {t: d.texts for t, d in train.items()}
            export_onnx(real, onnx_dirs[system], quantize=quantize, calibration=calibration, backbone=backbone)
            setup[f"export_{system}_s"] = round(time.perf_counter() - t0, 1)
            _log(f"[prepare] exported {system} in {setup[f'export_{system}_s']} s")

    backbone_bytes = sum(f.stat().st_size for f in resolve_backbone(backbone).glob("*.safetensors"))
    rng = np.random.default_rng(args.seed + 1)
    if args.qwk_only:
        runs = [(system, n_real, True) for system in args.systems]
    else:
        runs = plan(args, counts, n_real, has_full)
    rows = []
    for k, (system, n, wants_qwk) in enumerate(runs, 1):
        task_ids = ids[:n] if n else []
        n_cold = min(args.cold_samples, n, 3 if system == "full" else n)
        spec = {
            "system": system,
            "n_tasks": n,
            "task_ids": task_ids,
            "cold_ids": [task_ids[i] for i in rng.permutation(n)[:n_cold]] if n else [],
            "batches": str(work / "batches" / f"{n or n_real}.json"),
            "warmup": args.warmup,
            "batch_size": args.batch_size,
            "switch_reps": args.switch_reps,
            "threads": args.threads,
            "backbone": str(backbone),
            "suite": str(bench.root),
            "full_suite": str(full_root),
            "onnx_dir": str(onnx_dirs.get(system, "")),
            "peft_dir": str(work / "peft"),
            "pooling": bench.manifest["pooling"],
            "max_length": int(bench.manifest["max_length"]),
            "data": args.data,
            "real_ids": real_ids,
            "qwk": wants_qwk,
            "qwk_only": args.qwk_only,
        }
        elapsed = time.perf_counter() - t_start
        _log(f"[{k}/{len(runs)}] {SYSTEM_LABELS[system]}" + (f", {n} tasks" if n else "") + f" (t+{elapsed:.0f} s)")
        row = run_worker(spec, work, args.worker_timeout)
        if "error" in row:
            _log(f"  [{system} x{n}] FAILED: {row['error']}")
        row["label"] = SYSTEM_LABELS[system]
        row["disk_bytes"] = disk_bytes(system, task_ids, bench, full_root, onnx_dirs, work / "peft", backbone_bytes)
        rows.append(row)

    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/engine.py", *argv])
    if args.qwk_only:
        run = {"command": command, "date": time.strftime("%Y-%m-%d"), "machine": _machine(), "suite": str(real.root)}
        report = refresh_qwk(earlier_report, rows, run)
        write_json_atomic(earlier, report)
        (out / "engine.md").write_text(markdown(report), encoding="utf-8")
        _log(f"refreshed the test QWK of {earlier} and {out / 'engine.md'}")
        return report
    plain = _find(rows, "plain")
    for row in rows:
        row["vs_plain"] = _ratio(row.get("throughput"), plain and plain["throughput"])
    summary = summarise(rows, counts["engine"] if "engine" in args.systems else all_counts)
    qwk = {r["system"]: r["qwk"] for r in rows if "qwk" in r}
    report = {
        **{k: v for k, v in summary.items() if k not in ("summary_counts", "not_run")},
        "targets": check_targets(summary),
        "summary_counts": summary["summary_counts"],
        "not_run": summary["not_run"],
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": _machine(),
        "torch_threads": args.threads,
        "ort_intra_op_threads": args.threads,
        "versions": package_versions(("scoreplex", "torch", "transformers", "peft", "onnxruntime")),
        "batch_size": args.batch_size,
        "batches": args.batches,
        "warmup": args.warmup,
        "seed": args.seed,
        "perturb": args.perturb,
        "max_length": int(bench.manifest["max_length"]),
        "real_tasks": real_ids,
        "lora": {k: real.task_info(real_ids[0])["config"].get(k) for k in ("lora_r", "lora_alpha", "lora_targets")},
        "backbone": str(backbone),
        "backbone_bytes": backbone_bytes,
        "setup": setup,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "rows": rows,
        "qwk": qwk,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "engine.json", report)
    (out / "engine.md").write_text(markdown(report), encoding="utf-8")
    _log(f"wrote {out / 'engine.json'} and {out / 'engine.md'} ({report['wall_seconds']:.0f} s)")
    return report


def disk_bytes(system, task_ids, bench, full_root, onnx_dirs, peft_root, backbone_bytes) -> int:
    """What must be on disk to serve ``task_ids`` with ``system`` (the ONNX graph holds the backbone's weights)."""
    if system.startswith("plain"):
        return backbone_bytes
    if system == "full":
        from scoreplex.suite import Suite

        full = Suite.open(full_root, verify=False)
        return sum(full.task_bytes(t) for t in task_ids)
    if system.startswith("peft"):
        return backbone_bytes + sum(folder_bytes(peft_root / t) for t in task_ids)
    modules = sum(bench.task_bytes(t) for t in task_ids)
    if system.startswith("onnx"):
        return folder_bytes(onnx_dirs[system]) + modules
    return backbone_bytes + modules


# -- markdown -------------------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _figure(r: dict, key: str, suffix: str = "×") -> str:
    """A summary figure for the text: its value, or why it was not measured."""
    value = r.get(key)
    if value is None:
        return f"– ({r.get('not_run', {}).get(key, 'not measured')})"
    return f"{value:.2f}{suffix}"


def _row_tp(r: dict, system: str, n: int | None = None) -> float | None:
    for row in r.get("rows", []):
        if row.get("system") == system and (n is None or row.get("n_tasks") == n):
            return row.get("throughput")
    return None


def _peft_tp(r: dict) -> float | None:
    return _row_tp(r, "peft-mixed", r["summary_counts"]["small"])


def _plain_tp(r: dict) -> float | None:
    return _row_tp(r, "plain")


def markdown(r: dict) -> str:
    counts = r["summary_counts"]
    lines = [
        "# Engine benchmark: one shared backbone for many tasks vs PEFT vs one model per task",
        "",
        f"Reproduce: `{r['command']}` ({r['date']}; {r['machine']}; torch {r['versions']['torch']}, onnxruntime "
        f"{r['versions']['onnxruntime']}, peft {r['versions']['peft']}; {r['torch_threads']} torch threads = "
        f"{r['ort_intra_op_threads']} ONNX Runtime intra-op threads).",
        "",
        f"Every system scores the same {r['batches']} batches of {r['batch_size']} real ASAP-SAS test responses "
        f"(after {r['warmup']} warm-up batches), each in its own process; the task of each row is uniform over the "
        f"N tasks. Tasks beyond the {len(r['real_tasks'])} real LoRA adapters (r={r['lora']['lora_r']}, "
        f"alpha {r['lora']['lora_alpha']}, on {'/'.join(r['lora']['lora_targets'] or [])}) are synthetic copies "
        f"with A/B perturbed by {r['perturb']:g}×std. Max length {r['max_length']} tokens; times include "
        "tokenisation and the heads (the plain rows have no heads). The scoreplex engines sort each batch's rows by "
        "length and cut them into micro-batches of at most 1,024 padded tokens (`scoreplex.encoding.token_batches`); "
        "PEFT adapter_names and the whole-batch plain row run the 32 rows as one batch padded to its longest row; "
        "PEFT set_adapter and the full models run one sub-batch per task, padded to its own longest row. The engine "
        "target is measured against the plain backbone with the same micro-batches (what remains is the adapters' "
        f"cost); against the whole-batch plain row the engine runs at {_figure(r, 'engine_vs_plain_whole_batch_10')}.",
        "",
        "## Targets (issue 3)",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for t in r["targets"]:
        met = "–" if t["met"] is None else ("**met**" if t["met"] else "not met")
        spec = ".4f" if t["key"] == "onnx_int8_qwk_delta" else ".2f"
        measured = t.get("why", "not measured") if t["value"] is None else format(t["value"], spec)
        lines.append(f"| {t['what']} | {measured} | {t['target']} | {met} |")
    lines += [
        "",
        f'"10 tasks" / "1,000" / "100" above are the task counts {counts["small"]} / {counts["large"]} / '
        f"{counts['rss']} of this run.",
        "",
        "PEFT adapter_names runs each batch as one padded batch, as PEFT users do; the engine's length-aware "
        "micro-batching accounts for most of the engine / PEFT ratio. Batching aside, each against a plain forward "
        f"batched the same way: engine {_figure(r, 'engine_vs_plain_10')}, PEFT adapter_names "
        f"{_fmt(_ratio(_peft_tp(r), _plain_tp(r)))}×.",
        "",
        "## All systems",
        "",
        "| system | tasks | responses/s | × plain | p50 ms | p99 ms | peak RSS MB | disk MB | setup s | cold load ms "
        "| warm switch ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        n = row["n_tasks"] or "–"
        if "error" in row:
            lines.append(f"| {row['label']} | {n} | failed: {row['error']} |" + " |" * 8)
            continue
        lines.append(
            f"| {row['label']} | {n} | {row['throughput']:.1f} | {_fmt(row['vs_plain'])} | {row['p50_ms']:.0f} | "
            f"{row['p99_ms']:.0f} | {row['peak_rss_mb']:.0f} | {row['disk_bytes'] / 1e6:,.1f} | {row['setup_s']:.1f} | "
            f"{_fmt(row['cold_load_ms'])} | {_fmt(row['warm_switch_ms'])} |"
        )
    lines += [
        "",
        "- **responses/s**: responses over the summed time of the timed batches; **p50 / p99**: per-batch latency "
        f"(with {r['batches']} batches, p99 is close to the slowest batch).",
        "- **peak RSS**: the worker process's high-water resident set (`VmHWM`) after loading its tasks and serving "
        "(imports included; read before the QWK pass). Not `ru_maxrss`: Linux carries the parent's high-water mark "
        "into a child's `ru_maxrss` across fork + exec.",
        "- **disk**: what serving needs: backbone + task modules (engine), ONNX graph + task modules (ONNX), "
        "backbone + PEFT adapter folders with heads (PEFT), one full model per task (full).",
        "- **cold load**: median time to bring one evicted task back from disk into the running system: engine = "
        "AdapterStore load (read, SHA-256 check, parse, head, slot install); PEFT = `load_adapter` + its head after "
        "`delete_adapter`; full = `Suite.load_module` (hash-checked) + `Method.load` of one model (at most 3 samples).",
        "- **setup**: loading the N tasks into the worker (imports excluded).",
        "- **warm switch**: median time of a one-response call for task B right after a call for task A, minus that "
        "of a call for A right after A (both tasks resident): the cost of changing task between requests.",
    ]
    peft_loads = [row for row in r["rows"] if row.get("initial_load_ms_median") is not None]
    if peft_loads:
        cells = ", ".join(
            f"{row['system']} with {row['n_tasks']} tasks: {row['initial_load_ms_median']:.1f} ms (setup "
            f"{row['setup_s']:.1f} s)"
            for row in peft_loads
        )
        lines.append(f"- PEFT `load_adapter` while building the model (median per adapter): {cells}.")
    if r["qwk"]:
        systems = list(r["qwk"])
        lines += [
            "",
            "## Test QWK per backend (every test response of the real items, scored once)",
            "",
        ]
        run = r.get("qwk_run")
        if run:
            lines += [
                f"From a later run than the timings above, on the LoRA suite as it is now: `{run['command']}` "
                f"({run['date']}; {run['machine']}).",
                "",
            ]
        lines += [
            "| task | " + " | ".join(SYSTEM_LABELS[s] for s in systems) + " |",
            "|---|" + "---|" * len(systems),
        ]
        for task in r["real_tasks"]:
            lines.append(f"| {task} | " + " | ".join(f"{r['qwk'][s]['tasks'][task]:.4f}" for s in systems) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{r['qwk'][s]['mean']:.4f}**" for s in systems) + " |")
    setup = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s" for k, v in r["setup"].items())
    lines += ["", f"Preparation: {setup}; whole run {r['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
