"""What the INR task commands (:mod:`.classify`, :mod:`.editing`, :mod:`.represent`) share:
their common options, running a task with a one-line error on bad input, and the results
table (mean ± std over seeds per method and split)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Sequence

import numpy as np
import torch

from ..zoo.folder import atomic_write_text

Column = tuple[str, str, float, int]  # record key, header, factor, decimals


def task_parser(prog: str, description: str, zoo_help: str, methods: Sequence[str], epochs: int) -> argparse.ArgumentParser:
    """A parser with ``--zoo --methods --splits --seeds --epochs --threads --out``."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--zoo", required=True, help=zoo_help)
    p.add_argument("--methods", default=",".join(methods))
    p.add_argument("--splits", default="random", help="comma-separated: random, ood")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--out", help="write the records here (JSON)")
    return p


def run_task(args: argparse.Namespace, run: Callable[[], list[dict]], table: Callable[[list[dict]], str]) -> int:
    """Set the threads, ``run()`` (its progress on stderr), write ``--out``, print the table;
    a ``ValueError`` / ``OSError`` is one ``error:`` line and exit code 1."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        records = run()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.out:
        atomic_write_text(args.out, json.dumps(records, indent=1) + "\n")
    print(table(records))
    return 0


def check_methods(methods: Sequence[str], known: Sequence[str]) -> None:
    """``ValueError`` naming the methods of ``methods`` not in ``known``."""
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(known)}")


def measured(record: dict, compute: Callable[[], dict], log=None) -> dict:
    """``record`` updated with ``compute()``'s results, or with ``refused`` (the reason) when it
    raises ``ValueError`` (a method that cannot run on this zoo), and with ``seconds``; printed
    as one JSON line to ``log``."""
    start = time.perf_counter()
    try:
        record.update(compute())
    except ValueError as e:
        record["refused"] = str(e)
    record["seconds"] = round(time.perf_counter() - start, 1)
    if log:
        print(json.dumps(record), file=log, flush=True)
    return record


def results_table(records: Sequence[dict], columns: Sequence[Column],
                  label: Callable[[str], str] = lambda m: m) -> str:
    """Markdown: a row per method, per split one cell per column (``key`` x ``factor``, mean ±
    std over the records that have it, their count in brackets), mean seconds per run."""
    splits = list(dict.fromkeys(r["split"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    head = [f"{s} {header}" for s in splits for _, header, _, _ in columns]
    lines = ["| method | " + " | ".join(head) + " | s / run |", "|---|" + "---|" * (len(head) + 1)]
    for m in methods:
        cells, seconds = [], []
        for s in splits:
            done = [r for r in records if r["method"] == m and r["split"] == s and columns[0][0] in r]
            seconds += [r["seconds"] for r in done]
            for key, _, factor, decimals in columns:
                vals = [factor * r[key] for r in done]
                cells.append(f"{np.mean(vals):.{decimals}f} ± {np.std(vals):.{decimals}f} ({len(vals)})" if vals else "n/a")
        lines.append(f"| {label(m)} | " + " | ".join(cells) + (f" | {np.mean(seconds):.0f} |" if seconds else " | - |"))
    return "\n".join(lines)
