"""Does averaging two LoRA recipes' class probabilities help? Validation QWK of two suites and of their ensemble.

Per item, on the benchmark's validation split (seeded stratified 10% of train.tsv; test.tsv is not read): QWK of
suite A, suite B and the mean of their calibrated class probabilities, each decoded by argmax and by rounding the
expected score. Prints one line per item and the means.

    python benchmarks/recipe_ensemble.py --a runs/asap-v2/lora --b runs/asap-v3/lora --items 1,2,3,4
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import whole_numbers
from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.splits import train_val_split
from scoreplex.engine import Engine
from scoreplex.metrics import quadratic_weighted_kappa

COLUMNS = ("A argmax", "B argmax", "A+B argmax", "A expected", "B expected", "A+B expected")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="first suite (LoRA or head-only)")
    ap.add_argument("--b", required=True, help="second suite, trained on the same items and split")
    ap.add_argument(
        "--items", required=True, type=whole_numbers, help="comma-separated item numbers that both suites hold"
    )
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas)")
    ap.add_argument("--seed", type=int, default=0, help="the benchmark's split seed")
    args = ap.parse_args()
    items = args.items
    train = load_asap_sas(args.data, split="train", items=items)
    engines = Engine(args.a), Engine(args.b)

    def probs(engine: Engine, task: str, texts: list[str]) -> np.ndarray:  # (n, K) of the first dimension
        return np.array([o["probs"][next(iter(o["probs"]))] for o in engine.score([(task, x) for x in texts])])

    rows = []
    print("item", *COLUMNS, sep=" | ")
    for task, data in train.items():
        _, val = train_val_split(data, val_fraction=0.1, seed=args.seed)
        y = np.asarray(val.labels)[:, 0]
        pa, pb = (probs(e, task, list(val.texts)) for e in engines)
        pe = (pa + pb) / 2
        ks = np.arange(pa.shape[1])
        row = [quadratic_weighted_kappa(y, p.argmax(1)) for p in (pa, pb, pe)]
        row += [quadratic_weighted_kappa(y, np.rint(p @ ks).astype(int)) for p in (pa, pb, pe)]
        rows.append(row)
        print(task, *(f"{x:.3f}" for x in row), sep=" | ", flush=True)
    print("mean", *(f"{x:.3f}" for x in np.mean(rows, axis=0)), sep=" | ")


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
