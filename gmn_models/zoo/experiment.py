"""Accuracy prediction on a zoo: splits, metrics, seeds, a markdown table.

    python -m gmn_models.zoo.experiment --zoo zoo_small --methods arch_only,statnn,deepsets,dmc \\
        --seeds 3 --out results.md

* Splits (:func:`split_rows`): ``full`` — a random 20 % test set drawn per seed, train on the
  other 80 %; ``10%`` — the same test set, train on a random 10 % of ``full``'s training rows;
  so mean ± std over seeds includes the split's variance. ``ood`` (the same for every seed;
  only the methods' seeds vary) — per family, train on the
  networks whose ``width`` is at most the family's median width, test on the strictly wider
  ones (the paper's "train on low hidden dimension, test on strictly higher").
* Metrics: R² (``sklearn.metrics.r2_score``) and Kendall τ (``scipy.stats.kendalltau``) of the
  predicted vs. the true ``test_acc``; mean ± std over seeds.
* Methods: a registry of ``fn(train_rows, test_rows, seed) -> predictions``
  (:data:`METHODS`, :func:`register_method`, :func:`run_method`): the baselines of
  :mod:`gmn_models.zoo.baselines` and ``gmn`` (:mod:`gmn_models.zoo.gmn_method`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.stats import kendalltau
from sklearn.metrics import r2_score
from threadpoolctl import threadpool_limits

from .baselines import BASELINES
from .folder import load_rows

SPLITS = ("full", "10%", "ood")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
Method = Callable[[Sequence[dict], Sequence[dict], int], np.ndarray]
METHODS: dict[str, Method] = {}


def register_method(name: str, fn: Method, *, override: bool = False) -> None:
    """Add ``fn(train_rows, test_rows, seed) -> np.ndarray`` (one prediction of ``test_acc``
    per test row) under ``name``; registering a taken name needs ``override=True``."""
    if name in METHODS and not override:
        raise ValueError(f"method {name!r} is already registered")
    METHODS[name] = fn


def run_method(name: str, train_rows: Sequence[dict], test_rows: Sequence[dict], seed: int) -> np.ndarray:
    """Predictions of method ``name`` for ``test_rows`` after fitting on ``train_rows``."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    preds = np.asarray(METHODS[name](train_rows, test_rows, seed), dtype=np.float64).reshape(-1)
    if preds.shape[0] != len(test_rows):
        raise ValueError(f"method {name!r} returned {preds.shape[0]} predictions for {len(test_rows)} rows")
    return preds


for _name, _fn in BASELINES.items():
    register_method(_name, _fn)


def _gmn(train_rows: Sequence[dict], test_rows: Sequence[dict], seed: int) -> np.ndarray:
    from .gmn_method import gmn_predict  # imported lazily: needs gmn_models.model / datasets

    return gmn_predict(train_rows, test_rows, seed)


register_method("gmn", _gmn)


def split_rows(rows: Sequence[dict], split: str, seed: int) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows) of ``split`` (see the module docstring) for ``seed``."""
    if split == "ood":
        train, test = [], []
        for family in sorted({r["family"] for r in rows}):
            fam = [r for r in rows if r["family"] == family]
            cut = float(np.median([r["width"] for r in fam]))
            train += [r for r in fam if r["width"] <= cut]
            test += [r for r in fam if r["width"] > cut]
        return train, test
    order = np.random.default_rng([SPLIT_SEED, seed]).permutation(len(rows))
    n_test = int(round(TEST_FRACTION * len(rows)))
    test = [rows[i] for i in order[:n_test]]
    train = [rows[i] for i in order[n_test:]]
    if split == "full":
        return train, test
    if split == "10%":
        pick = np.random.default_rng([SPLIT_SEED, seed, 1]).permutation(len(train))[: max(2, len(train) // 10)]
        return [train[i] for i in sorted(pick)], test
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"r2", "tau"}``; τ is NaN when either side is constant."""
    tau = kendalltau(true, pred).statistic if np.ptp(pred) > 0 and np.ptp(true) > 0 else float("nan")
    return {"r2": float(r2_score(true, pred)), "tau": float(tau)}


def run_experiment(rows: Sequence[dict], methods: Sequence[str], splits: Sequence[str] = SPLITS,
                   seeds: Sequence[int] = (0, 1, 2), log=None) -> list[dict]:
    """One record per (method, split, seed): ``method, split, seed, r2, tau, n_train, n_test,
    seconds``."""
    records = []
    for split in splits:
        for seed in seeds:
            train, test = split_rows(rows, split, seed)
            true = np.array([r["test_acc"] for r in test])
            for name in methods:
                start = time.perf_counter()
                pred = run_method(name, train, test, seed)
                rec = {"method": name, "split": split, "seed": seed, **metrics(true, pred),
                       "n_train": len(train), "n_test": len(test),
                       "seconds": round(time.perf_counter() - start, 2)}
                records.append(rec)
                if log:
                    print(f"{split:5s} seed {seed} {name:10s} R2 {rec['r2']:.3f} tau {rec['tau']:.3f} "
                          f"({rec['seconds']}s)", file=log, flush=True)
    return records


def markdown_table(records: Sequence[dict]) -> str:
    """Methods × splits, cells ``R² mean ± std / τ mean ± std`` over seeds."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    splits = list(dict.fromkeys(r["split"] for r in records))
    counts = {s: next(f"{r['n_train']}/{r['n_test']}" for r in records if r["split"] == s) for s in splits}
    lines = ["| method | " + " | ".join(f"{s} (train/test {counts[s]}): R² / τ" for s in splits) + " |",
             "|---" * (len(splits) + 1) + "|"]
    for m in methods:
        cells = []
        for s in splits:
            sel = [r for r in records if r["method"] == m and r["split"] == s]
            r2, tau = np.array([r["r2"] for r in sel]), np.array([r["tau"] for r in sel])
            cells.append(f"{r2.mean():.3f} ± {r2.std():.3f} / {tau.mean():.3f} ± {tau.std():.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gmn_models.zoo.experiment",
                                description="Predict test accuracy from weights: baselines (and GMN) on a zoo.")
    p.add_argument("--zoo", required=True, help="zoo folder (models.csv)")
    p.add_argument("--methods", default="constant,arch_only,hparams,statnn,deepsets,dmc",
                   help=f"comma-separated, from: {','.join(METHODS)}")
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and OpenMP/BLAS threads (default 1: small fits are slower with more, "
                        "and far slower on a busy machine)")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method(s) {unknown}; known: {sorted(METHODS)}", file=sys.stderr)
        return 2
    rows = load_rows(args.zoo)
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):  # scikit-learn's boosted trees use OpenMP
        records = run_experiment(rows, methods, args.splits.split(","), range(args.seeds), log=sys.stderr)
    table = markdown_table(records)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
