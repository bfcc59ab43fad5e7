"""Full-size GPT-2 small (124M parameters): compile time and peak memory.

    pip install -e ".[heavy]" && python bench/gpt2_small.py

The model is ``transformers.GPT2LMHeadModel(GPT2Config())`` with random weights (nothing is
downloaded); the example input is 8 token ids. Run in a fresh process: peak RSS
(``ru_maxrss``) then covers the model itself (498 MB of float32 weights), tracing, lowering
and the finished graph. Printed against the goals of issue 4: compile <= 15 s and peak memory
<= 3x the parameter bytes. What the graph costs per edge under schema v1 (an int64 edge index,
six float32 feature columns, two int64 provenance columns = 56 bytes) is printed too, since
it bounds the memory any schema-v1 graph of this size needs.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import time

import torch

import gmn_compiler
from gmn_compiler.lowering import lower
from gmn_compiler.registry import default_registry

GOAL_SECONDS = 15.0
GOAL_MEMORY_RATIO = 3.0


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=8, help="tokens in the example input")
    args = parser.parse_args()
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(use_cache=False)).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, args.seq))
    params = sum(p.numel() for p in model.parameters())
    param_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    rss_model = _rss_mib()

    start = time.perf_counter()
    ir = gmn_compiler.to_ir(model, (ids,))
    traced = time.perf_counter()
    registry = default_registry()
    built, _ = lower(ir, registry)
    lowered = time.perf_counter()
    edges = int(built.edge_index.shape[1])
    graph_mib = sum(t.numel() * t.element_size() for t in
                    (built.x, built.edge_index, built.edge_attr, built.edge_param, built.edge_offset)) / 2**20
    peak = _rss_mib()

    total = lowered - start
    print(f"# GPT-2 small, {datetime.date.today()}, {platform.machine()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} threads")
    print(f"parameters              {params:,} ({param_mib:.0f} MiB)")
    print(f"graph                   {int(built.num_nodes):,} nodes, {edges:,} edges, "
          f"{graph_mib:.0f} MiB ({graph_mib * 2**20 / edges:.0f} bytes/edge)")
    print(f"trace s                 {traced - start:.2f}")
    print(f"lowering s              {lowered - traced:.2f}")
    print(f"compile s               {total:.2f}   goal <= {GOAL_SECONDS:.0f}: "
          f"{'PASS' if total <= GOAL_SECONDS else 'MISS'}")
    print(f"peak RSS MiB            {peak:.0f} (model loaded: {rss_model:.0f})")
    print(f"peak / parameter bytes  {peak / param_mib:.1f}x   goal <= {GOAL_MEMORY_RATIO:.0f}x: "
          f"{'PASS' if peak / param_mib <= GOAL_MEMORY_RATIO else 'MISS'}")
    print(f"graph / parameter bytes {graph_mib / param_mib:.1f}x (the schema-v1 output alone)")


if __name__ == "__main__":
    main()
