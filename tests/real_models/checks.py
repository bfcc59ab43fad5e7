"""Every oracle on one architecture of the catalogue, as one row of the coverage table."""

from __future__ import annotations

import time

import torch

import gmn_compiler as gc
from gmn_compiler import testing
from real_models.base import CATALOGUE

STEPS = ("build", "trace", "compile", "round trip", "oracle", "swap test")


def check(family: str, swap_pairs: int = 8) -> dict:
    """Run the steps in order on ``CATALOGUE[family]``; the first that fails ends it. Returns
    ``status`` ("pass" or the failing step), ``reason`` (the exception's first line), and what
    was measured: parameters, nodes, edges, compile and oracle seconds, automorphisms run,
    declarations proved, swapped pairs (function changed / compared)."""
    arch = CATALOGUE[family]
    row = {"family": family, "library": arch.library, "source": arch.source, "status": "pass"}
    step = "build"
    try:
        model, inputs = arch.build()
        row["params"] = sum(p.numel() for p in model.parameters())
        step = "trace"
        torch.export.export(model, inputs)
        step = "compile"
        start = time.perf_counter()
        pg = gc.compile(model, inputs)
        row["compile_s"] = time.perf_counter() - start
        row["nodes"], row["edges"] = pg.num_nodes, pg.num_edges
        step = "round trip"
        testing.assert_round_trip(model, inputs)
        step = "oracle"
        start = time.perf_counter()
        report = gc.check_symmetry(model, inputs, trials=3, graph=pg, **arch.oracle)
        row["generators"] = report.generators_checked
        row["soundness"] = report.proof
        row["declared"] = len(report.symmetries_checked)
        step = "swap test"
        tolerances = {k: v for k, v in arch.oracle.items() if k in ("rtol", "atol")}
        swaps = testing.assert_swap_faithful(model, inputs, max_pairs=swap_pairs, **tolerances)
        row["swaps"] = f"{swaps.changed}/{len(swaps.pairs)}"
        row["oracle_s"] = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001  (every failure is a row of the table)
        row["status"] = step
        row["reason"] = f"{type(exc).__name__}: {_first_line(exc)}"
    return row


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:300]
