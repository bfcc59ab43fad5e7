"""Compile-speed benchmark: lowering time as a ratio to a memory-bound floor.

    python bench/compile_speed.py                      # ResNet-50 shape, best of 5
    python bench/compile_speed.py --model resnet18 --repeat 3
    python bench/compile_speed.py --profile 25         # + cProfile of one lowering, top 25

The model is built here (no torchvision, no downloads): a standard ResNet with BatchNorm and
1000 classes; ``resnet50`` is Bottleneck blocks [3, 4, 6, 3], expansion 4, 25,557,032
parameters. Weights are random: only the shapes matter for speed.

What is timed (best of ``--repeat`` runs after one warm-up, all in this process; the floor
and the lowering runs alternate, so that load from other processes hits both alike):

- trace: ``gmn_compiler.to_ir(model, inputs)`` -- torch.export plus the conversion to IR
  (the first call in a process, which warms torch.export up, is printed separately);
- lowering: ``gmn_compiler.lowering.lower(ir, registry)`` plus materialising the PyG ``Data``
  (``EdgeBlocks.materialize``), i.e. everything from the IR to the per-edge tensors a GNN
  reads; also printed: ``lower`` alone (what ``gmn_compiler.compile`` does under schema v2,
  which keeps the compact graph and materialises on first use);
- floor = flatten + edge index, the least any compiler must do for one edge per parameter:
  - flatten: ``torch.cat([p.reshape(-1) for p in model.parameters()])`` (a fresh tensor);
  - edge index: fill a ``LongTensor [2, total_params]`` allocated once beforehand, with one
    broadcast ``copy_`` of (source ids, target ids) per parameter block (the scheme of
    ``GraphBuilder``, minus every other column). Also printed: the same fill into a fresh
    ``torch.empty`` each time, i.e. including the page faults of 2 x 8 x total bytes.

The verdict compares lowering with the target ``lowering <= 5 x floor`` (DESIGN.md section 7).
Peak RSS is ``ru_maxrss`` of the process after tracing and one lowering (model, IR and one
graph alive), before the floor's buffers exist.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import resource
import sys
import time

import torch
from torch_geometric.data import Data

import gmn_compiler
from gmn_models.architectures import MODELS, resnet
from gmn_compiler.lowering import lower
from gmn_compiler.registry import default_registry

TARGET_RATIO = 5.0


# ---------------------------------------------------------------------------- timing
def best_of(fn, repeat: int, warmup: int = 1) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls after ``warmup`` untimed ones, and the last result.
    Each result is dropped before the next call, so runs do not stack up memory."""
    for _ in range(warmup):
        fn()
        gc.collect()
    best, result = float("inf"), None
    for _ in range(repeat):
        result = None
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def flatten_floor(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params])


def edge_index_floor(params: list[torch.Tensor], total: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fill a ``[2, total]`` edge index with one broadcast copy of (source ids, target ids)
    per parameter block: an edge ``in -> out`` per weight ``W[out, in, ...]``, an edge
    ``aux -> channel`` per 1-D parameter (bias, BN affine). Into ``out`` when given
    (preallocated storage), else into a fresh ``torch.empty``."""
    edge_index = torch.empty((2, total), dtype=torch.long) if out is None else out
    start = node = 0
    for p in params:
        grid = tuple(p.shape)
        end = start + p.numel()
        if p.dim() >= 2:
            n_out, n_in = grid[0], grid[1]
            tail = (1,) * (p.dim() - 2)
            src = torch.arange(node, node + n_in).view((1, n_in) + tail)
            dst = torch.arange(node + n_in, node + n_in + n_out).view((n_out, 1) + tail)
            node += n_in + n_out
        else:
            src = torch.tensor([node])
            dst = torch.arange(node + 1, node + 1 + grid[0])
            node += 1 + grid[0]
        edge_index[0, start:end].view(grid).copy_(src.expand(grid))
        edge_index[1, start:end].view(grid).copy_(dst.expand(grid))
        start = end
    return edge_index


def lower_to_data(ir, registry) -> Data:
    """Lowering to the compact graph (what ``gmn_compiler.compile`` does after the IR), then
    materialising the PyG ``Data`` a GNN consumes (what ``ParameterGraph.data`` does)."""
    blocks, _ctx = lower(ir, registry)
    return blocks.materialize()


def lower_compact(ir, registry):
    """Lowering to the compact graph only (schema v2: no per-edge tensors)."""
    return lower(ir, registry)[0]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (best is kept)")
    parser.add_argument("--trace-repeat", type=int, default=None,
                        help="timed tracing runs (default: --repeat)")
    parser.add_argument("--input-size", type=int, default=224, help="H = W of the example input")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, cProfile one lowering and print the top N functions")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = max(1, args.repeat)
    trace_repeat = repeat if args.trace_repeat is None else max(1, args.trace_repeat)

    registry = default_registry()
    model = resnet(args.model)
    inputs = (torch.randn(1, 3, args.input_size, args.input_size),)
    params = [p.detach() for p in model.parameters()]
    total = sum(p.numel() for p in params)

    # Tracing: the first call warms torch.export up; then best of trace_repeat.
    t0 = time.perf_counter()
    ir = gmn_compiler.to_ir(model, inputs, registry=registry)
    t_trace_cold = time.perf_counter() - t0
    del ir
    t_trace, ir = best_of(lambda: gmn_compiler.to_ir(model, inputs, registry=registry),
                          trace_repeat, warmup=0)

    # Warm-up lowering (untimed): graph size, and the peak RSS of model + IR + one graph.
    data = lower_to_data(ir, registry)
    nodes, edges = int(data.num_nodes), int(data.edge_index.shape[1])
    param_edges = int((data.edge_param >= 0).sum())
    del data
    gc.collect()
    rss = peak_rss_mib()

    # Floor warm-up: the preallocated edge index gets its pages here, outside any timing.
    storage = torch.empty((2, total), dtype=torch.long)
    edge_index_floor(params, total, out=storage)
    flat = flatten_floor(params)
    assert flat.numel() == total
    del flat

    timings: dict[str, list[float]] = {"flatten": [], "index": [], "index_fresh": [], "lower": [],
                                       "compact": []}
    runs = {
        "flatten": lambda: flatten_floor(params),
        "index": lambda: edge_index_floor(params, total, out=storage),  # noqa: F821 (deleted only after the runs)
        "index_fresh": lambda: edge_index_floor(params, total),
        "lower": lambda: lower_to_data(ir, registry),
        "compact": lambda: lower_compact(ir, registry),
    }
    for _ in range(repeat):  # round robin: a burst of load from elsewhere hits every measure
        for name, fn in runs.items():
            gc.collect()
            t0 = time.perf_counter()
            result = fn()
            timings[name].append(time.perf_counter() - t0)
            del result
    best = {name: min(ts) for name, ts in timings.items()}
    del storage
    t_flat, t_index, t_fresh, t_lower = best["flatten"], best["index"], best["index_fresh"], best["lower"]
    t_floor = t_flat + t_index
    ratio = t_lower / t_floor
    median_lower = sorted(timings["lower"])[len(timings["lower"]) // 2]

    print(f"model           {args.model}  input (1, 3, {args.input_size}, {args.input_size})  "
          f"torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"python {platform.python_version()}  {datetime.date.today()}")
    print(f"params          {total:,}  ({len(params)} tensors)")
    print(f"graph           {nodes:,} nodes, {edges:,} edges "
          f"({param_edges:,} carry parameters/buffers; {len(ir.ops)} IR ops)")
    print(f"runs            best of {repeat} after 1 warm-up (trace: best of {trace_repeat} "
          f"after the first call)")
    print(f"trace s         {t_trace:8.3f}   to_ir: torch.export + IR (first call in the "
          f"process: {t_trace_cold:.3f})")
    print(f"lowering s      {t_lower:8.3f}   lower() + PyG Data (median {median_lower:.3f})")
    print(f"compact s       {best['compact']:8.3f}   lower() alone: the compact graph (ratio "
          f"{best['compact'] / t_floor:.2f})")
    print(f"floor s         {t_floor:8.3f}   = flatten {t_flat:.3f} + edge index {t_index:.3f} "
          f"(into preallocated storage)")
    print(f"ratio           {ratio:8.2f}   lowering / floor")
    print(f"fresh floor s   {t_flat + t_fresh:8.3f}   = flatten {t_flat:.3f} + edge index "
          f"{t_fresh:.3f} into a fresh torch.empty; ratio {t_lower / (t_flat + t_fresh):.2f}")
    print(f"peak RSS MiB    {rss:8.0f}   model + IR + one graph (ru_maxrss)")
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"verdict         {verdict}: lowering is {ratio:.2f}x the floor "
          f"(target <= {TARGET_RATIO:g}x)")

    if args.profile:
        import cProfile
        import pstats
        gc.collect()
        profiler = cProfile.Profile()
        profiler.enable()
        data = lower_to_data(ir, registry)
        profiler.disable()
        del data
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.profile)
        stats.sort_stats("cumulative").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
