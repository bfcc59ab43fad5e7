"""Oracles for rule and plugin authors (DESIGN §4), in one place.

- :func:`randomized`: a copy of a model whose every floating parameter and buffer is random
  (defaults such as LayerNorm's ones hide swapped edges from every oracle).
- :func:`check_round_trip`: oracle 1, decompiling the unedited values is bit-exact.
- :func:`gmn_compiler.check_symmetry`: oracles 2-3, soundness of the automorphism group and
  completeness of the declared symmetries.
- :func:`swap_test`: oracle 5, exchanging two parameter blocks of equal shape that changes
  the function must change the graph (the compiled graphs, values included, must not be
  isomorphic).
- :func:`check_all`: all of them.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

import torch
from torch import nn

from . import canonical
from .errors import SymmetryError
from .graph import ParameterGraph


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every floating parameter and buffer drawn
    at random (standard normal; buffers named ``running_var`` uniform in [0.5, 1.5])."""
    clone = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in itertools.chain(clone.named_parameters(), clone.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.rsplit(".", 1)[-1] == "running_var":
                t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64))
    return clone


def check_round_trip(model: nn.Module, inputs: tuple, **options) -> ParameterGraph:
    """Compile ``model``; decompiling the unedited edge values must reproduce every state
    entry the graph represents bit for bit. Returns the graph."""
    from .api import compile as compile_model

    pg = compile_model(model, inputs, **options)
    reference = model.state_dict()
    for name, tensor in pg.to_state_dict(pg.data.edge_attr[:, 0]).items():
        if name not in reference or not torch.equal(tensor, reference[name]):
            raise SymmetryError(f"round trip: {name} differs after decompiling the unedited values")
    return pg


@dataclass
class SwapReport:
    """What :func:`swap_test` compared: ``pairs`` swapped, of which ``changed`` changed the
    function (each of those gave a non-isomorphic graph)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    changed: int = 0


def _outputs(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*inputs)
    return [t.double() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float, atol: float) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x, y, rtol=rtol, atol=atol)
                                    for x, y in zip(a, b))


def swap_candidates(model: nn.Module) -> list[tuple[str, str]]:
    """Pairs of floating state entries (parameters and buffers) of equal shape."""
    by_shape: dict[tuple, list[str]] = {}
    for name, t in model.state_dict().items():
        if t.is_floating_point() and t.numel() > 0:
            by_shape.setdefault((t.dtype, tuple(t.shape)), []).append(name)
    return [pair for names in by_shape.values() for pair in itertools.combinations(names, 2)]


def swap_test(model: nn.Module, inputs: tuple, *, max_pairs: int = 16, seed: int = 0,
              pairs: list[tuple[str, str]] | None = None, rtol: float = 1e-6, atol: float = 1e-8,
              **options) -> SwapReport:
    """Oracle 5. ``model`` is randomized (:func:`randomized`); for up to ``max_pairs`` pairs
    of state entries of equal shape (or the given ``pairs``), the two are exchanged. When
    that changes the outputs (float64), the graphs compiled before and after must not be
    isomorphic with values — otherwise a GNN would have to give one answer for two
    functions. Raises :class:`SymmetryError` naming the pair."""
    from .api import compile as compile_model

    base = randomized(model, seed)
    pairs = list(pairs) if pairs is not None else swap_candidates(base)
    if len(pairs) > max_pairs:
        pick = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:max_pairs]
        pairs = [pairs[i] for i in sorted(pick.tolist())]
    report = SwapReport()
    if not pairs:
        return report
    inputs64 = tuple(t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)
    reference = _outputs(copy.deepcopy(base).double(), inputs64)
    pg = compile_model(base, inputs, **options)
    for a, b in pairs:
        swapped = copy.deepcopy(base)
        state = swapped.state_dict()
        ta, tb = state[a].clone(), state[b].clone()
        with torch.no_grad():
            state[a].copy_(tb)
            state[b].copy_(ta)
        report.pairs.append((a, b))
        if _same(reference, _outputs(copy.deepcopy(swapped).double(), inputs64), rtol, atol):
            continue
        report.changed += 1
        if canonical.isomorphic(pg, compile_model(swapped, inputs, **options)):
            raise SymmetryError(f"swap test: exchanging {a} and {b} changes the function, but the two "
                                "compiled graphs are isomorphic (a false symmetry)")
    return report


def check_all(model: nn.Module, inputs: tuple, *, seed: int = 0, trials: int = 4,
              max_pairs: int = 16, **options) -> ParameterGraph:
    """Round trip, soundness, completeness and the swap test on a randomized copy of
    ``model``; returns its graph. Raises :class:`SymmetryError` on the first failure."""
    from .symmetry import check_symmetry

    base = randomized(model, seed)
    pg = check_round_trip(base, inputs, **options)
    check_symmetry(base, inputs, trials=trials, seed=seed, graph=pg)
    swap_test(base, inputs, max_pairs=max_pairs, seed=seed, **options)
    return pg
