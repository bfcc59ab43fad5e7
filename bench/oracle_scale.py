"""How the correctness oracles scale: ``check_symmetry`` (soundness + completeness) on a
synthetic residual CNN of ~50k graph nodes, with its steps timed; and, as the same-run
reference, the previous way (every BLISS generator through the model, completeness from one
BLISS call for all blocks) against the current one on a 12,720-node model of the same family
(the previous way cannot finish the large one: it lists ~33k generators of 50k entries each).

    python bench/oracle_scale.py [--channels 512 --blocks 32 --groups 8] [--reference-channels 256 --reference-blocks 16]

Prints one line per step and the ratio; results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from unittest import mock

import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical, symmetry, symmetry_proof


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


def _model(channels: int, blocks: int, groups: int):
    torch.manual_seed(0)
    model = GroupedResNet(channels, blocks, groups).eval()
    x = (torch.randn(1, 3, 4, 4),)
    pg, _ = _timed("compile", lambda: gc.compile(model, x))
    units = sum(s["nodes"].numel() for s in pg.symmetries)
    print(f"  {pg.num_nodes} nodes, {pg.num_edges} edges, {len(pg.symmetries)} declared symmetries over {units} units")
    return model, x, pg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--blocks", type=int, default=32)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--reference-channels", type=int, default=256)
    p.add_argument("--reference-blocks", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")

    print(f"reference: {args.reference_blocks} blocks of {args.reference_channels} channels")
    model, x, pg = _model(args.reference_channels, args.reference_blocks, args.groups)
    with mock.patch.object(symmetry_proof, "find_witnesses", lambda *a, **k: None):
        old_report, old = _timed("check_symmetry, previous way (every BLISS generator, up to 256, + witnesses)",
                                 lambda: gc.check_symmetry(model, x, graph=pg))
    model, x, pg = _model(args.reference_channels, args.reference_blocks, args.groups)  # nothing cached
    report, new = _timed("check_symmetry, now (witnesses + four group orders)", lambda: gc.check_symmetry(model, x, graph=pg))
    print(f"  previous: {old_report.proof}; now: {report.proof}; speed-up {old / new:.1f}x")

    print(f"large: {args.blocks} blocks of {args.channels} channels in {args.groups} groups")
    model, x, pg = _model(args.channels, args.blocks, args.groups)
    _timed("structure graph for BLISS", lambda: canonical.Extender.of(pg))
    witnesses, _ = _timed("witnesses (BLISS extensions, generators of A_P)",
                          lambda: symmetry_proof.find_witnesses(pg, symmetry.free_declarations(pg)))
    _timed("four exact group orders", lambda: witnesses.sound)
    print(f"  {len(witnesses.transpositions)} transposition witnesses, {len(witnesses.block_maps)} block maps")
    pg._structure_cache.clear()
    report, total = _timed("check_symmetry from scratch (all of the above, model runs, completeness)",
                           lambda: gc.check_symmetry(model, x, graph=pg))
    print(f"check_symmetry: {total:.1f} s for {pg.num_nodes} nodes ({report.automorphisms_checked} random products, "
          f"{len(report.symmetries_checked)} declarations proved; {report.proof})")


if __name__ == "__main__":
    main()
