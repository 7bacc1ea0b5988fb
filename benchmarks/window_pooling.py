"""How a long response's windows are best combined: the long-input proxy's pooling choices, on validation only.

The long-input proxy of ``benchmarks/itembanks.py`` encodes ASAP-SAS responses at ``max_length`` 48 (truncated, or in
overlapping windows whose pooled vectors are averaged) and at the full length. Its encoder-alone figure is that windows
recover 66% of what truncation loses (target 80%). This benchmark asks whether another way of combining the windows
would do better, before the library grows one: the frozen encoder's per-window pooled vectors are computed once per
item, then the same head (the ``head`` method's :class:`~scoreplex.heads.ScoringHead`: LayerNorm, dropout, linear;
AdamW, its learning rate, early stopping on validation QWK) is trained on each pooling:

* ``truncated``: the first window only (= truncation at 48 tokens);
* ``mean``: the mean of the windows' vectors (what ``--long-inputs windows`` does today);
* ``max``: the element-wise maximum over windows;
* ``mean+max``: both, concatenated (a head of twice the width);
* ``attention``: a softmax over windows of a learned score (LayerNorm, then a linear map to one number per window,
  zero at initialisation, so it starts as ``mean``) trained with the head (Ilse et al. 2018, attention-based deep
  multiple-instance learning, eq. 8 without the tanh layer);
* ``full``: one window of the full ``max_length`` (the reference truncation is measured against).

Every figure is validation QWK on the benchmark's seeded 10% split of train.tsv; test.tsv is not read. The selection
epoch is chosen on the same validation rows, for every pooling alike, so the absolute figures are optimistic and only
the differences and the recovered share (``(pooling - truncated) / (full - truncated)``) are meant to be read.

Reproduce: ``python benchmarks/window_pooling.py --out docs/results`` (about 15 min on 2 cores; the features are
cached under ``--work``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from _common import whole_numbers
from scoreplex.backbone import DEFAULT_BACKBONE, Backbone, pool
from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.splits import train_val_split
from scoreplex.encoding import LongInputs, collate, encode_texts, pool_windows, token_batches
from scoreplex.heads import ScoringHead
from scoreplex.metrics import quadratic_weighted_kappa
from scoreplex.suite import write_json_atomic

POOLINGS = ("truncated", "mean", "max", "mean+max", "attention", "full")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas)")
    ap.add_argument("--items", default="", type=whole_numbers, help="comma-separated item numbers (default: all 10)")
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE)
    ap.add_argument("--proxy-length", type=int, default=48, help="window max_length (default 48, as in itembanks)")
    ap.add_argument("--stride", type=int, default=24, help="tokens between window starts (default 24)")
    ap.add_argument("--full-length", type=int, default=160, help="the full max_length (default 160, as in itembanks)")
    ap.add_argument(
        "--seeds",
        default="0,1,2",
        type=whole_numbers,
        help="head-training seeds; figures are their mean (default 0,1,2)",
    )
    ap.add_argument("--work", default="runs/window-pooling", help="feature cache")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--report-only", action="store_true", help="rewrite the markdown from --out's JSON; train nothing")
    return ap.parse_args(argv)


# -- features -------------------------------------------------------------------------------------------------------


@torch.no_grad()
def window_features(bb: Backbone, texts: list[str], max_length: int, long_inputs: LongInputs):
    """Every window's mean-pooled vector ``(W, H)`` and the response of each ``(W,)`` (a response within
    ``max_length`` is one window)."""
    enc = encode_texts(bb.tokenizer, texts, max_length, long_inputs=long_inputs)
    pooled, owner = [], []
    for idx in token_batches(enc.lengths, max_rows=64):
        batch = collate(enc, idx)
        out = bb.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        pooled.append(pool(out.last_hidden_state, batch["attention_mask"], "mean"))
        rows = batch.get("windows", torch.arange(len(idx)))
        owner.append(torch.as_tensor(np.asarray(idx))[rows])
    return torch.cat(pooled), torch.cat(owner)


def item_features(bb: Backbone, texts: list[str], args, cache: Path) -> dict[str, torch.Tensor]:
    """``windows (W, H)``, ``owner (W,)`` and ``full (N, H)`` for one item's responses, cached in ``cache``."""
    if cache.exists():
        return load_file(cache)
    windows, owner = window_features(bb, texts, args.proxy_length, LongInputs("windows", stride=args.stride))
    full, full_owner = window_features(bb, texts, args.full_length, LongInputs())
    order = torch.argsort(full_owner)
    feats = {"windows": windows.contiguous(), "owner": owner.contiguous(), "full": full[order].contiguous()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    save_file(feats, tmp)
    tmp.replace(cache)
    return feats


# -- poolings ---------------------------------------------------------------------------------------------------------


def segment_softmax(scores: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of ``scores (W,)`` within each response's windows (``owner (W,)`` in ``0..n-1``)."""
    top = torch.full((n,), -torch.inf).scatter_reduce(0, owner, scores, "amax")  # (n,)
    e = torch.exp(scores - top[owner])
    return e / torch.zeros(n).index_add_(0, owner, e)[owner]


class Pooled(nn.Module):
    """One pooling of a response's windows followed by a ScoringHead: ``(W, H), (W,) -> (n, K)``."""

    def __init__(self, kind: str, hidden: int, classes: int) -> None:
        super().__init__()
        self.kind = kind
        width = 2 * hidden if kind == "mean+max" else hidden
        self.head = ScoringHead(width, [classes])
        self.score = None
        if kind == "attention":
            self.score = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 1))
            nn.init.zeros_(self.score[1].weight)
            nn.init.zeros_(self.score[1].bias)

    def forward(self, windows: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
        h = windows.shape[1]
        if self.kind in ("mean", "truncated", "full"):  # the last two: one window per response
            z = pool_windows(windows, owner, n, "mean")
        elif self.kind in ("max", "mean+max"):  # the library's pooling; max alone is its second half
            z = pool_windows(windows, owner, n, "mean+max")
            z = z[:, h:] if self.kind == "max" else z
        else:  # attention
            a = segment_softmax(self.score(windows).squeeze(-1), owner, n)  # (W,)
            z = torch.zeros(n, h).index_add_(0, owner, a[:, None] * windows)
        return self.head(z)


def rows_of(feats, kind: str, index: np.ndarray):
    """The windows of responses ``index`` renumbered ``0..len(index)-1`` for ``kind``: ``(W, H), (W,)``."""
    if kind == "full":
        return feats["full"][index], torch.arange(len(index))
    pos = torch.full((len(feats["full"]),), -1, dtype=torch.long)
    pos[torch.as_tensor(index)] = torch.arange(len(index))
    keep = pos[feats["owner"]] >= 0
    windows, owner = feats["windows"][keep], pos[feats["owner"][keep]]
    if kind == "truncated":  # the first window of each response = truncation at max_length
        first = torch.ones(len(owner), dtype=torch.bool)
        first[1:] = owner[1:] != owner[:-1]
        windows, owner = windows[first], owner[first]
    return windows, owner


def train_head(feats, kind, labels, train_idx, val_idx, classes, seed, epochs=40, patience=5, batch=32) -> float:
    """Best validation QWK of a Pooled(kind) head trained like the ``head`` method (AdamW lr 2e-3, wd 0.01)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Pooled(kind, feats["full"].shape[1], classes)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    vw, vo = rows_of(feats, kind, val_idx)
    y = torch.as_tensor(labels)
    best, since = -1.0, 0
    for _ in range(epochs):
        model.train()
        order = rng.permutation(train_idx)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            w, o = rows_of(feats, kind, idx)
            loss = nn.functional.cross_entropy(model(w, o, len(idx)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(vw, vo, len(val_idx)).argmax(1).numpy()
        q = float(quadratic_weighted_kappa(labels[val_idx], pred, labels=list(range(classes))))
        best, since = (q, 0) if q > best else (best, since + 1)
        if since >= patience:
            break
    return best


# -- main -------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report_only:
        report = json.loads((Path(args.out) / "window-pooling.json").read_text(encoding="utf-8"))
        (Path(args.out) / "window-pooling.md").write_text(markdown(report), encoding="utf-8")
        return report
    if args.threads:
        torch.set_num_threads(args.threads)
    items = args.items or None
    seeds = args.seeds
    train_all = load_asap_sas(args.data, split="train", items=items)
    bb = Backbone.load(args.backbone)
    t0 = time.perf_counter()
    per_item: dict[str, dict[str, float]] = {}
    windows_per_response = {}
    for n, (tid, data) in enumerate(train_all.items(), 1):
        train, val = train_val_split(data, val_fraction=0.1, seed=0)
        pos = {r: i for i, r in enumerate(data.ids)}
        train_idx = np.array([pos[r] for r in train.ids])
        val_idx = np.array([pos[r] for r in val.ids])
        print(f"[{n}/{len(train_all)}] {tid}: features", flush=True)
        feats = item_features(bb, data.texts, args, Path(args.work) / f"{tid}.safetensors")
        windows_per_response[tid] = len(feats["owner"]) / len(feats["full"])
        classes = data.spec.dimensions[0].num_classes
        labels = data.labels[:, 0]
        per_item[tid] = {
            kind: float(np.mean([train_head(feats, kind, labels, train_idx, val_idx, classes, s) for s in seeds]))
            for kind in POOLINGS
        }
        print(
            f"[{n}/{len(train_all)}] {tid}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_item[tid].items()), flush=True
        )
    means = {k: float(np.mean([per_item[t][k] for t in per_item])) for k in POOLINGS}
    lost = means["full"] - means["truncated"]
    recovered = {k: ((means[k] - means["truncated"]) / lost if lost else None) for k in POOLINGS}
    report = {
        "command": "python benchmarks/window_pooling.py " + shlex.join(argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "split": "validation (seeded 10% of train.tsv); test.tsv not read",
        "proxy_length": args.proxy_length,
        "stride": args.stride,
        "full_length": args.full_length,
        "seeds": seeds,
        "windows_per_response": windows_per_response,
        "per_item": per_item,
        "mean_val_qwk": means,
        "recovered": recovered,
        "seconds": time.perf_counter() - t0,
    }
    out = Path(args.out)
    write_json_atomic(out / "window-pooling.json", report)
    (out / "window-pooling.md").write_text(markdown(report), encoding="utf-8")
    print(json.dumps({"mean_val_qwk": means, "recovered": recovered}, indent=1))
    return report


def markdown(r: dict) -> str:
    items = list(r["per_item"])
    lines = [
        "# Combining a long response's windows: pooling choices on the long-input proxy (validation)",
        "",
        f"Reproduce: `{r['command']}` ({r['date']}, {r['machine']}).",
        "",
        f"Frozen MiniLM, windows of {r['proxy_length']} tokens every {r['stride']}, against truncation at "
        f"{r['proxy_length']} and the full length {r['full_length']}; the `head` method's head trained on each "
        f"pooling, mean of seeds {r['seeds']}. {r['split']}. The epoch is picked on the same validation rows for every "
        "pooling, so read differences and the recovered share, not the absolute level.",
        "",
        "| item | windows / response | " + " | ".join(POOLINGS) + " |",
        "|---|---:|" + "---:|" * len(POOLINGS),
    ]
    for t in items:
        cells = " | ".join(f"{r['per_item'][t][k]:.3f}" for k in POOLINGS)
        lines.append(f"| {t} | {r['windows_per_response'][t]:.2f} | {cells} |")
    lines.append("| **mean** | | " + " | ".join(f"**{r['mean_val_qwk'][k]:.3f}**" for k in POOLINGS) + " |")
    rec = r["recovered"]
    lines.append(
        "| recovered share of the truncation loss | | "
        + " | ".join("" if rec[k] is None else f"{rec[k]:.2f}" for k in POOLINGS)
        + " |"
    )
    means = r["mean_val_qwk"]
    best = max((k for k in POOLINGS if k not in ("truncated", "full")), key=lambda k: means[k])
    lines += [
        "",
        f"Best way of combining the windows on validation: **{best}** ({means[best]:.3f} mean validation QWK, against "
        f"{means['mean']:.3f} for the mean). `scoreplex train --long-inputs windows --window-pool {best}` trains it; "
        "the long-input proxy in [itembanks.md](itembanks.md) scores it once on test.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
