"""Accuracy prediction on a zoo: splits, metrics, seeds, a markdown table.

    python -m gmn_models.zoo.experiment --zoo zoo_small --methods arch_only,statnn,deepsets,dmc \\
        --seeds 3 --out results.md

* Splits (:func:`split_rows`): ``full`` — a random 20 % test set drawn per seed, train on the
  other 80 %; ``10%`` — the same test set, train on a random 10 % of ``full``'s training rows;
  so mean ± std over seeds includes the split's variance. ``ood`` (the same for every seed;
  only the methods' seeds vary) — per family, train on the
  networks whose ``width`` is at most the family's median width, test on the strictly wider
  ones (the paper's "train on low hidden dimension, test on strictly higher").
* Metrics: R² and Kendall τ (:func:`gmn_models.metrics.r2_tau`, equal to
  ``sklearn.metrics.r2_score`` and ``scipy.stats.kendalltau``) of the predicted vs. the true
  ``test_acc``; mean ± std over seeds (:func:`~gmn_models.zoo.report.markdown_table`).
* Resuming: with ``--out``, every finished (method, split, seed) job is saved at once under
  ``<out>/jobs`` (:mod:`gmn_models.zoo.jobs`); a rerun with the same options on the same zoo
  keeps those records and runs only the rest (a run of several hours survives an interruption).
* Unlabelled rows (:func:`unlabeled_rows`): at ``10%`` the other 90 % of ``full``'s training
  rows, whose weights and recipes a user holds but whose accuracies were not measured; a
  method registered with ``semi_supervised=True`` receives them as ``unlabeled=`` (with
  ``test_acc`` and ``train_acc`` removed); every other method never sees them.
* Methods: a registry of ``fn(train_rows, test_rows, seed) -> predictions``
  (:data:`METHODS`, :func:`register_method`, :func:`run_method`): the baselines of
  :mod:`gmn_models.zoo.baselines` and ``gmn`` (:mod:`gmn_models.zoo.gmn_method`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..metrics import r2_tau
from ..workers import usable_workers
from .baselines import BASELINES, SEMI_SUPERVISED_BASELINES
from .folder import load_rows
from .jobs import Job, JobStore, code_digest, zoo_digest
from .report import markdown_table, write_report

SPLITS = ("full", "10%", "ood")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
Method = Callable[[Sequence[dict], Sequence[dict], int], np.ndarray]
METHODS: dict[str, Method] = {}
SEMI_SUPERVISED: set[str] = set()
LABELS = ("test_acc", "train_acc")  # measured accuracies: removed from unlabelled rows


def register_method(name: str, fn: Method, *, override: bool = False, semi_supervised: bool = False) -> None:
    """Add ``fn(train_rows, test_rows, seed) -> np.ndarray`` (one prediction of ``test_acc``
    per test row) under ``name``; registering a taken name needs ``override=True``. With
    ``semi_supervised``, the experiment also passes the split's :func:`unlabeled_rows` as
    ``unlabeled=``."""
    if name in METHODS and not override:
        raise ValueError(f"method {name!r} is already registered")
    METHODS[name] = fn
    SEMI_SUPERVISED.discard(name)
    if semi_supervised:
        SEMI_SUPERVISED.add(name)


def run_method(name: str, train_rows: Sequence[dict], test_rows: Sequence[dict], seed: int,
               **options) -> np.ndarray:
    """Predictions of method ``name`` for ``test_rows`` after fitting on ``train_rows``;
    ``options`` are passed to the method as keyword arguments."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    preds = np.asarray(METHODS[name](train_rows, test_rows, seed, **options), dtype=np.float64).reshape(-1)
    if preds.shape[0] != len(test_rows):
        raise ValueError(f"method {name!r} returned {preds.shape[0]} predictions for {len(test_rows)} rows")
    return preds


for _name, _fn in BASELINES.items():
    register_method(_name, _fn, semi_supervised=_name in SEMI_SUPERVISED_BASELINES)


def _gmn(train_rows: Sequence[dict], test_rows: Sequence[dict], seed: int, **options) -> np.ndarray:
    from .gmn_method import GMNConfig, gmn_predict  # imported lazily: builds parameter graphs

    config = options.pop("config", None) or GMNConfig()
    return gmn_predict(train_rows, test_rows, seed, config=config, **options)


register_method("gmn", _gmn, semi_supervised=True)


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


def unlabeled_rows(rows: Sequence[dict], split: str, seed: int) -> list[dict]:
    """Rows of ``split`` that are neither train nor test rows but whose weights a user of the
    split holds without labels: at ``10%`` the rest of ``full``'s training rows (disjoint from
    the test rows); none for ``full`` and ``ood`` (every non-test row is labelled there)."""
    if split != "10%":
        return []
    train_full, _ = split_rows(rows, "full", seed)
    labelled = {r["path"] for r in split_rows(rows, "10%", seed)[0]}
    return [r for r in train_full if r["path"] not in labelled]


metrics = r2_tau
"""``metrics(true, pred) -> {"r2", "tau"}`` (:func:`gmn_models.metrics.r2_tau`): τ is NaN when
either side is constant, both are NaN for fewer than two rows."""


_WORKER_ROWS: list[dict] = []


def _init_worker(rows: list[dict], threads: int) -> None:
    global _WORKER_ROWS
    _WORKER_ROWS = rows
    torch.set_num_threads(threads)
    threadpool_limits(threads)  # scikit-learn's boosted trees use OpenMP


def _run_job(rows: Sequence[dict], job: Job, options: dict) -> dict:
    name, split, seed = job
    train, test = split_rows(rows, split, seed)
    true = np.array([r["test_acc"] for r in test])
    start = time.perf_counter()
    kwargs = dict(options.get(name, {}))
    if name in SEMI_SUPERVISED:
        kwargs["unlabeled"] = [{k: v for k, v in r.items() if k not in LABELS}
                               for r in unlabeled_rows(rows, split, seed)]
    pred = run_method(name, train, test, seed, **kwargs)
    return {"method": name, "split": split, "seed": seed, **metrics(true, pred),
            "n_train": len(train), "n_test": len(test), "seconds": round(time.perf_counter() - start, 2),
            "paths": [r["path"] for r in test], "families": [r["family"] for r in test],
            "true": true.tolist(), "pred": pred.tolist()}


def _run_job_in_worker(job: Job, options: dict) -> dict:
    return _run_job(_WORKER_ROWS, job, options)


def _log_record(rec: dict, log, note: str = "") -> None:
    """One line per finished job, ``note`` at its end."""
    if log:
        print(f"{rec['split']:5s} seed {rec['seed']} {rec['method']:10s} R2 {rec['r2']:.3f} "
              f"tau {rec['tau']:.3f} ({rec['seconds']}s){note}", file=log, flush=True)


def run_experiment(rows: Sequence[dict], methods: Sequence[str], splits: Sequence[str] = SPLITS,
                   seeds: Sequence[int] = (0, 1, 2), log=None, options: dict | None = None,
                   workers: int = 0, threads: int = 1, store: JobStore | None = None) -> list[dict]:
    """One record per (method, split, seed): ``method, split, seed, r2, tau, n_train, n_test,
    seconds`` and the test rows' ``paths``, ``families``, ``true`` and ``pred`` values, in the
    order (split, seed, method) whatever the order in which the jobs finished.

    ``options[method]`` are keyword arguments of that method. With ``workers > 0`` the jobs run
    in that many spawned processes with ``threads`` torch/OpenMP threads each (the methods'
    results do not depend on which process runs them); the ``gmn`` parameter graphs are built
    once, here, before the workers start.

    With a ``store`` (:class:`~gmn_models.zoo.jobs.JobStore`), jobs it holds a record of (same
    method, split, seed, options and zoo) are not rerun, and every job that finishes is saved
    to it at once, so that an interrupted run resumes where it stopped."""
    options = options or {}
    jobs = [(name, split, seed) for split in splits for seed in seeds for name in methods]
    done: dict[Job, dict] = {}
    if store is not None:
        for job in jobs:
            record = store.load(job, options.get(job[0], {}))
            if record is not None:
                done[job] = record
                other_code = ", made by other gmn_models code" if record.get("code") != code_digest() else ""
                _log_record(record, log, f" [kept from an earlier run{other_code}]")

    def finish(record: dict) -> None:
        job = (record["method"], record["split"], record["seed"])
        done[job] = record
        if store is not None:
            store.save(record, options.get(job[0], {}))
        _log_record(record, log)

    todo = [job for job in jobs if job not in done]
    if usable_workers(workers) <= 0 or not todo:
        for job in todo:
            finish(_run_job(rows, job, options))
        return [done[job] for job in jobs]
    if any(job[0] == "gmn" for job in todo):
        from .gmn_method import zoo_graphs

        zoo_graphs(rows[0]["root"], "test_acc")  # compile and cache once, not once per worker
    # slowest methods first, so that the last jobs to finish are short ones
    order = sorted(todo, key=lambda j: (j[0] != "gmn", j[0] not in ("deepsets", "dmc")))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(list(rows), threads)) as pool:
        futures = {pool.submit(_run_job_in_worker, job, options): job for job in order}
        for future in as_completed(futures):
            finish(future.result())
    return [done[job] for job in jobs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gmn_models.zoo.experiment",
                                description="Predict test accuracy from weights: baselines and GMN on a zoo.")
    p.add_argument("--zoo", required=True, help="zoo folder (models.csv)")
    p.add_argument("--methods", default="constant,arch_only,hparams,statnn,statnn_recipe,deepsets,dmc,gmn",
                   help=f"comma-separated, from: {','.join(METHODS)}")
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    p.add_argument("--out", help="output folder: table.md, records.csv, predictions.csv, scatter_<split>.png, "
                                 "and jobs/ (one record per finished job: a rerun with the same options "
                                 "resumes; delete it to rerun every job)")
    p.add_argument("--gmn", action="append", default=[], metavar="KEY=VALUE",
                   help="a GMN hyperparameter (gmn_models.zoo.gmn_method.GMNConfig), repeatable")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes for the (method, split, seed) jobs (default 0: run here)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and OpenMP/BLAS threads per process (default 1: small fits are slower "
                        "with more, and far slower on a busy machine)")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method(s) {unknown}; known: {sorted(METHODS)}", file=sys.stderr)
        return 2
    options = {}
    if "gmn" in methods:
        from .gmn_method import GMNConfig

        try:
            options["gmn"] = {"config": GMNConfig().replace(args.gmn)}
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        rows = load_rows(args.zoo)
    except (OSError, ValueError) as e:
        print(f"error: cannot read zoo {args.zoo}: {e}", file=sys.stderr)
        return 1
    store = JobStore(os.path.join(args.out, "jobs"), zoo_digest(rows)) if args.out else None
    code_digest()  # the code this run starts with is the code its records are marked with
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        try:
            records = run_experiment(rows, methods, args.splits.split(","), range(args.seeds), log=sys.stderr,
                                     options=options, workers=args.workers, threads=args.threads, store=store)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    stale = [r for r in records if r.get("code", code_digest()) != code_digest()]
    if stale:
        print(f"warning: {len(stale)} of {len(records)} records were kept from a run of other gmn_models "
              f"code; delete {store.folder} to rerun them", file=sys.stderr)
    table = markdown_table(records)
    print(table)
    if args.out:
        write_report(records, args.out, table)
        print(f"wrote {os.path.join(args.out, 'table.md')}, records.csv, predictions.csv and scatter plots",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
