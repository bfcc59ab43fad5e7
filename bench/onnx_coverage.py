"""Real architectures through ONNX as users make the files: written to docs/onnx_coverage.md.

    pip install -e ".[test,heavy]" && python bench/onnx_coverage.py             # every architecture
    python bench/onnx_coverage.py --only Llama --only BERT --no-write           # a few, table printed only

Each architecture of the catalogue (``tests/real_models``, as in ``bench/coverage_table.py``)
runs in a fresh process:

1. *export*: ``torch.onnx.export(model, inputs, path)`` with no options -- torch's defaults, the
   dynamo exporter and its optimizer (a failure here is torch's, listed as such);
2. *compile*: ``gmn_compiler.compile(path)`` (a refusal is the compiler's one-line message);
3. *round trip*: the unedited edge values written back give every initializer bit for bit;
4. *oracle*: ``check_symmetry`` on the file: 3 random automorphisms and every declared symmetry
   preserve onnxruntime's outputs;
5. *parity* (reported, not required): the graph from the file against the graph from the torch
   model. ``same``: isomorphic, every feature included. ``BN folded``: the exporter folded
   batch norms into the convolutions before them, so the file holds a different (equivalent)
   model and its graph is that model's. ``differs``: anything else (decomposed ops that the
   torch graph keeps whole, constants the file turned into weights), with both sizes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the catalogue lives beside the heavy tests that use it


def check(family: str) -> dict:
    """One architecture through steps 1-5; a dict for one table row."""
    import contextlib
    import io
    import logging
    import warnings

    import onnx
    import torch
    from onnx import numpy_helper

    import gmn_compiler as gc
    from gmn_compiler import canonical
    from real_models import CATALOGUE

    arch = CATALOGUE[family]
    row = {"family": family, "library": arch.library, "source": arch.source}
    model, inputs = arch.build()
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, inputs, str(path))
    except Exception as exc:  # torch's own failure, reported as such
        return {**row, "status": "export failed", "reason": _first_line(exc)}
    start = time.perf_counter()
    try:
        pg = gc.compile(str(path))
    except Exception as exc:
        return {**row, "status": "refused", "reason": _first_line(exc)}
    row.update(compile_s=time.perf_counter() - start, nodes=pg.data.num_nodes, edges=pg.data.num_edges)
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    state = pg.to_state_dict(pg.data.edge_attr[:, 0])
    changed = [name for name, tensor in state.items()
               if name in initializers and not torch.equal(tensor, torch.from_numpy(initializers[name].copy()))]
    if changed:
        return {**row, "status": "round trip", "reason": f"{len(changed)} initializers differ, first {changed[0]}"}
    start = time.perf_counter()
    try:
        gc.check_symmetry(str(path), trials=3, graph=pg)
    except Exception as exc:
        return {**row, "status": "oracle", "reason": _first_line(exc)}
    row["oracle_s"] = time.perf_counter() - start
    from_torch = gc.compile(model, inputs)
    row["torch_size"] = f"{from_torch.data.num_nodes:,} / {from_torch.data.num_edges:,}"
    if canonical.isomorphic(from_torch, pg):
        row["parity"] = "same"
    elif "batch_norm" in from_torch.summary and "batch_norm" not in pg.summary:
        row["parity"] = "BN folded"
    else:
        row["parity"] = "differs"
    return {**row, "status": "pass"}


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # torch colours its messages
    return (text[0] if text else type(exc).__name__)[:300]


def _in_subprocess(family: str, timeout: float) -> dict:
    try:
        done = subprocess.run([sys.executable, __file__, "--child", family], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"family": family, "status": "timeout", "reason": f"no result within {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"family": family, "status": "crash", "reason": tail[:300]}
    return json.loads(lines[-1])


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("torch", "onnx", "onnxscript", "onnxruntime", "timm", "transformers"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} missing")
    return ", ".join(found)


def markdown(rows: list[dict], seconds: float) -> str:
    count = lambda key, value: sum(row.get(key) == value for row in rows)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads 1"
    lines = [
        "# Coverage of real architectures through ONNX",
        "",
        "Generated by `python bench/onnx_coverage.py` (heavy environment, README \"Heavy tests\"); do not",
        "edit by hand. The models of [coverage.md](coverage.md), each exported with",
        "`torch.onnx.export(model, inputs, path)` and no options (torch's defaults: the dynamo exporter",
        "and its optimizer), then compiled from the file, round-tripped (every initializer bit for bit)",
        "and checked through onnxruntime (3 random automorphisms, every declared symmetry). *parity*",
        "compares the graph with the torch model's: *same* (isomorphic, every feature), *BN folded* (the",
        "exporter folded batch norms into convolutions: the file is that equivalent model), *differs*.",
        "",
        f"**{count('status', 'pass')} of {len(rows)} pass** ({count('parity', 'same')} with the torch graph's "
        f"parity, {count('parity', 'BN folded')} with batch norms folded); "
        f"{count('status', 'export failed')} are not exported by torch, {count('status', 'refused')} refused.",
        f"Run {datetime.date.today().isoformat()} on {machine}; {_versions()}; {seconds / 60:.1f} min in all.",
        "",
        "| family | library | class | nodes | edges | torch graph | compile s | oracle s | result | parity |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        result = "pass" if row["status"] == "pass" else f"**{row['status']}**: {row.get('reason', '')}"
        cells = [row["family"], row.get("library", ""), f"`{row.get('source', '')}`",
                 f"{row['nodes']:,}" if "nodes" in row else "", f"{row['edges']:,}" if "edges" in row else "",
                 row.get("torch_size", ""), f"{row['compile_s']:.2f}" if "compile_s" in row else "",
                 f"{row['oracle_s']:.1f}" if "oracle_s" in row else "", result, row.get("parity", "")]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="an architecture family (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per architecture")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/ alone")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.child:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(check(args.child)))
        return
    from real_models import CATALOGUE

    families = args.only or list(CATALOGUE)
    start, rows = time.perf_counter(), []
    for family in families:
        row = _in_subprocess(family, args.timeout)
        rows.append(row)
        print(f"{family:22s} {row['status']:13s} {row.get('parity', ''):10s} {row.get('reason', '')}", flush=True)
    table = markdown(rows, time.perf_counter() - start)
    if args.no_write:
        print(table)
        return
    (ROOT / "docs" / "onnx_coverage.md").write_text(table)
    print(f"wrote docs/onnx_coverage.md: {sum(r['status'] == 'pass' for r in rows)} of {len(rows)} pass")


if __name__ == "__main__":
    main()
