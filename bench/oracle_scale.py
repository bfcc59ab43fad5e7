"""How the correctness oracles scale: compile a synthetic residual CNN of ~50k graph nodes and
time each oracle step; completeness is also timed the old way (one BLISS call per declared
adjacent transposition) on a smaller model of the same family (the old way takes hours on
the large one), as the same-run reference.

    python bench/oracle_scale.py [--channels 512 --blocks 32 --groups 8] [--reference-blocks 2 --reference-channels 128]

Prints one line per step and the ratios; results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.symmetry import check_completeness, pinned_by_structure


class GroupedResNet(nn.Module):
    """A stem conv, then ``blocks`` residual blocks of two grouped 1x1 convs with BatchNorm."""

    def __init__(self, channels: int, blocks: int, groups: int):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 1, groups=groups), nn.BatchNorm2d(channels), nn.ReLU(),
                          nn.Conv2d(channels, channels, 1, groups=groups), nn.BatchNorm2d(channels))
            for _ in range(blocks))
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h.mean((2, 3)))


def _timed(what: str, fn):
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    print(f"  {what}: {seconds:.1f} s", flush=True)
    return out, seconds


def completeness_one_call_per_transposition(pg) -> int:
    """The previous completeness check: one BLISS extension per declared adjacent
    transposition (the same-run reference). Returns the number of calls."""
    pinned = pinned_by_structure(pg)
    extender = canonical.Extender(pg)
    calls = 0
    for sym in pg.symmetries:
        ids = sym["nodes"]
        if bool(pinned[ids].any()):
            continue
        base = {u: u for u in ids.tolist()}
        for block in ids.view(sym["groups"], -1).tolist():
            for i in range(len(block) - 1):
                partial = dict(base)
                partial[block[i]], partial[block[i + 1]] = block[i + 1], block[i]
                if extender.extend(partial) is None:
                    raise AssertionError("missing symmetry")
                calls += 1
    return calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--blocks", type=int, default=32)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--reference-blocks", type=int, default=2)
    p.add_argument("--reference-channels", type=int, default=128)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    x = (torch.randn(1, 3, 4, 4),)

    print(f"reference: {args.reference_blocks} blocks of {args.reference_channels} channels")
    small = GroupedResNet(args.reference_channels, args.reference_blocks, args.groups).eval()
    pg_small = gc.compile(small, x)
    print(f"  {pg_small.num_nodes} nodes, {pg_small.num_edges} edges")
    calls, old = _timed("completeness, one BLISS call per transposition", lambda: completeness_one_call_per_transposition(pg_small))
    pg_small = gc.compile(small, x)
    _, new = _timed("completeness, one BLISS call for all blocks", lambda: check_completeness(pg_small))
    print(f"  {calls} transpositions; speed-up {old / new:.1f}x")

    print(f"large: {args.blocks} blocks of {args.channels} channels in {args.groups} groups")
    model = GroupedResNet(args.channels, args.blocks, args.groups).eval()
    pg, _ = _timed("compile", lambda: gc.compile(model, x))
    units = sum(s["nodes"].numel() for s in pg.symmetries)
    print(f"  {pg.num_nodes} nodes, {pg.num_edges} edges, {len(pg.symmetries)} declared symmetries over {units} units")
    gens, t_gens = _timed("automorphism group generators (BLISS)", lambda: canonical.automorphism_generators(pg))
    print(f"  {len(gens)} generators")
    _, t_complete = _timed("completeness", lambda: check_completeness(pg))
    report, t_all = _timed("check_symmetry (soundness on up to 256 generators + 8 products, completeness)",
                           lambda: gc.check_symmetry(model, x, graph=pg))
    # beyond 256 generators, every completeness witness (one per declared transposition) is
    # also run through the model: that is where the time goes
    witnesses = sum(s["nodes"].numel() - s["groups"] for s in pg.symmetries) if len(gens) > 256 else 0
    runs = report.automorphisms_checked + min(256, len(gens)) + witnesses
    double = model.double()
    double(x[0].double())
    start = time.perf_counter()
    for _ in range(20):
        double(x[0].double())
    forward = (time.perf_counter() - start) / 20
    print(f"check_symmetry: {t_all:.1f} s for {pg.num_nodes} nodes, about {runs} model runs: "
          f"{1000 * t_all / runs:.1f} ms per run, of which the float64 forward pass {1000 * forward:.1f} ms "
          f"({t_all / (runs * forward):.1f}x that floor)")

if __name__ == "__main__":
    main()
