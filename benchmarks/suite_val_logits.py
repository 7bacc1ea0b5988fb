"""Save a trained ASAP-SAS suite's validation log-probabilities in the layout ``benchmarks/lexical.py`` stacks.

    python benchmarks/suite_val_logits.py runs/asap-v2/lora --out runs/stack/lora

For each task in the suite: the seeded stratified 10% validation split of train.tsv that the benchmark trained with
(``train_val_split(val_fraction=0.1, seed=0)``), scored with the model's own probabilities (no decoding), written as
``<out>/<item>/val_logits.npy`` (log-probabilities, ``(N_val, K)``) and ``val_labels.npy``. test.tsv is not read.
Tasks already written are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.splits import train_val_split
from scoreplex.scorer import SuiteScorer
from scoreplex.suite import Suite


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", help="an ASAP-SAS suite folder written by benchmarks/asap_sas.py")
    ap.add_argument("--out", required=True, help="folder for <item>/val_logits.npy and val_labels.npy")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    suite = Suite.open(args.suite)
    scorer = SuiteScorer(suite, decoding=False)
    train = load_asap_sas(split="train")
    for tid in suite.task_ids:
        folder = Path(args.out) / tid
        if (folder / "val_logits.npy").is_file():
            continue
        _, val = train_val_split(train[tid], val_fraction=0.1, seed=0)
        probs = scorer.predict(tid, val.texts, val.ids).probs[0]
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "val_labels.npy", val.labels)
        np.save(folder / "val_logits.npy", np.log(np.clip(probs, 1e-12, 1.0)))
        print(f"{tid}: {len(val)} validation responses", flush=True)


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
