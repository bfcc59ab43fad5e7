"""Oracles for rule and plugin authors (DESIGN §4), as a public API.

Every ``assert_*`` function raises :class:`~gmn_compiler.errors.SymmetryError` (a subclass of
``AssertionError``, so pytest reports it as a failed assertion) naming what failed, and takes
the options of :func:`gmn_compiler.compile` as keyword arguments (``registry=`` a registry
built with :func:`load_registry` (re-exported here), e.g. ``load_registry([MyPlugin()])``
to test a plugin that is not installed; ``input_neuron_axes=``...): every graph is compiled
with them.

- :func:`assert_round_trip` (oracle 1): decompiling the unedited edge values is bit-exact.
- :func:`assert_sound` (oracle 2): every automorphism of the graph's structure preserves
  the model's function.
- :func:`assert_complete` (oracle 3): every symmetry the rules declared is an automorphism.
- :func:`assert_swap_faithful` (oracle 5): exchanging two parameter blocks of equal shape
  that changes the function must change the graph.
- :func:`assert_oracles`: all of them on a :func:`randomized` copy of the model (defaults
  such as LayerNorm's ones hide swapped edges from every oracle).

The old names ``check_round_trip``, ``swap_test`` and ``check_all`` remain as aliases. The
pytest plugin :mod:`gmn_compiler.pytest_plugin` serves this module as the ``gmn_oracles``
fixture.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import canonical
from .errors import ProvenanceError, SymmetryError
from .graph import ParameterGraph
from .registry import load_registry  # noqa: F401  (re-exported: the registry a plugin under test compiles with)
from .model_runs import cast_floats, fresh_eval, torch_runner
from .symmetry import SymmetryReport, check_completeness, check_symmetry

__all__ = ["assert_round_trip", "assert_sound", "assert_complete", "assert_swap_faithful",
           "assert_oracles", "randomized", "swap_candidates", "SwapReport", "SymmetryReport",
           "check_round_trip", "swap_test", "check_all"]


def randomized(model: nn.Module, seed: int = 0, keep: tuple[str, ...] = (), scale: float = 1.0) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every floating parameter and buffer drawn
    at random (normal with standard deviation ``scale``; buffers named ``running_var`` uniform
    in [0.5, 1.5]), except
    entries whose name ends with one of ``keep``: fixed structure a layer builds from its
    configuration (e2cnn's ``bias_expansion``), which a random draw would turn into another
    kind of layer."""
    clone = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in itertools.chain(clone.named_parameters(), clone.named_buffers()):
            if not t.is_floating_point() or (keep and name.endswith(keep)):
                continue
            if name.rsplit(".", 1)[-1] == "running_var":
                t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64) * scale)
    return fresh_eval(clone)  # caches derived from parameters follow the new values


def _compile(model: Any, inputs: Any, options: dict[str, Any]) -> ParameterGraph:
    """Compile ``model`` with the compile options; example inputs only for an ``nn.Module``."""
    from .api import compile as compile_model

    if isinstance(model, nn.Module):
        return compile_model(model, inputs, **options)
    return compile_model(model, **options)


def _graph(model: Any, inputs: Any, graph: ParameterGraph | None, options: dict[str, Any]) -> ParameterGraph:
    if graph is None:
        return _compile(model, inputs, options)
    if options:
        raise TypeError(f"compile options {sorted(options)} given with graph=: the graph is already "
                        "compiled; pass one or the other")
    return graph


def assert_round_trip(model: nn.Module, inputs: tuple, **compile_options: Any) -> ParameterGraph:
    """Oracle 1. Compile ``model`` (an ``nn.Module``) with ``inputs`` and ``compile_options``;
    decompiling the unedited edge values must give back every state entry the graph represents
    bit for bit, under the model's own names. Returns the graph.

    Raises :class:`SymmetryError` ("round trip: NAME differs ...") otherwise. Parameters the
    graph does not represent at all are not checked here (a forgotten bias shows up in
    :func:`assert_sound` or :func:`assert_swap_faithful`). A rule whose edge values are not
    the entries its offsets name is caught while compiling (:class:`ProvenanceError`) and
    reported the same way."""
    try:
        pg = _compile(model, inputs, compile_options)
    except ProvenanceError as exc:
        raise SymmetryError(f"round trip: {exc.param} differs after decompiling the unedited values "
                            f"({exc})") from exc
    reference = model.state_dict()
    for name, tensor in pg.to_state_dict(pg.edge_values()).items():
        if name not in reference or not torch.equal(tensor, reference[name]):
            raise SymmetryError(f"round trip: {name} differs after decompiling the unedited values")
    return pg


def assert_sound(model: Any, inputs: Any = None, *, graph: ParameterGraph | None = None,
                 trials: int = 4, seed: int = 0, rtol: float | None = None, atol: float | None = None,
                 **compile_options: Any) -> SymmetryReport:
    """Oracle 2, soundness only. Every generator of the automorphism group of the graph's
    structure (up to 256) and ``trials`` random automorphisms (drawn with ``seed``), applied to
    the edge values and decompiled, must leave the outputs of ``model`` on ``inputs``
    unchanged (float64, tolerances ``rtol`` / ``atol``). ``model`` is an ``nn.Module`` with
    ``inputs`` (a tuple) or an ONNX path / ``onnx.ModelProto`` (``inputs``: an optional
    ``{name: array}``, run through onnxruntime). The graph is ``graph`` or ``model`` compiled
    with ``compile_options`` (not both). Returns the report of
    :func:`gmn_compiler.symmetry.check_symmetry`; raises :class:`SymmetryError` ("... is not
    function-preserving ...") naming the first automorphism that changes the outputs."""
    pg = _graph(model, inputs, graph, compile_options)
    return check_symmetry(model, inputs, trials=trials, seed=seed, graph=pg, completeness=False,
                          rtol=rtol, atol=atol)


def assert_complete(model: Any, inputs: Any = None, *, graph: ParameterGraph | None = None,
                    **compile_options: Any) -> SymmetryReport:
    """Oracle 3, completeness only (the model is not run). Every symmetry the rules declared
    while compiling (hidden units, channels, heads, groups) must be an automorphism of the
    graph's structure: each adjacent transposition inside a block, and each swap of adjacent
    blocks where whole blocks may move, is proved by BLISS to extend to one. The graph is
    ``graph`` or ``model`` (as for :func:`assert_sound`) compiled with ``compile_options``.
    Returns a report whose ``symmetries_checked`` lists the declarations checked; raises
    :class:`SymmetryError` ("missing symmetry (proved): ...") for the first one missing."""
    pg = _graph(model, inputs, graph, compile_options)
    return SymmetryReport(0, 0, check_completeness(pg), 0.0)


@dataclass
class SwapReport:
    """What :func:`assert_swap_faithful` compared: ``pairs`` swapped, of which ``changed``
    changed the function (each of those gave a non-isomorphic graph)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    changed: int = 0


def _outputs(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        out = fresh_eval(model)(*inputs)
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


def assert_swap_faithful(model: nn.Module, inputs: tuple, *, max_pairs: int = 16, seed: int = 0,
                         pairs: list[tuple[str, str]] | None = None, rtol: float = 1e-6,
                         atol: float = 1e-8, keep: tuple[str, ...] = (), **compile_options: Any) -> SwapReport:
    """Oracle 5. ``model`` is randomized (:func:`randomized`); for up to ``max_pairs`` pairs
    of state entries of equal shape (or the given ``pairs``), the two are exchanged. When
    that changes the outputs (float64, ``rtol`` / ``atol``), the graphs compiled (with
    ``compile_options``) before and after must not be isomorphic with values — otherwise a
    GNN would have to give one answer for two functions. Returns what was compared; raises
    :class:`SymmetryError` ("swap test: exchanging A and B ...") naming the pair. ``keep``:
    see :func:`randomized`."""
    base = randomized(model, seed, keep)
    pairs = list(pairs) if pairs is not None else swap_candidates(base)
    if len(pairs) > max_pairs:
        pick = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:max_pairs]
        pairs = [pairs[i] for i in sorted(pick.tolist())]
    report = SwapReport()
    if not pairs:
        return report
    pg = _compile(base, inputs, compile_options)
    reference, _, dtype = torch_runner(base, pg, inputs)  # float64, or float32 if the model casts
    if dtype != torch.float64:  # the model casts internally: float32 tolerances
        rtol, atol = max(rtol, 1e-4), max(atol, 1e-5)
    cast = cast_floats(inputs, dtype)
    for a, b in pairs:
        swapped = copy.deepcopy(base)
        state = swapped.state_dict()
        ta, tb = state[a].clone(), state[b].clone()
        with torch.no_grad():
            state[a].copy_(tb)
            state[b].copy_(ta)
        report.pairs.append((a, b))
        if _same(reference, _outputs(copy.deepcopy(swapped).to(dtype), cast), rtol, atol):
            continue
        report.changed += 1
        if canonical.isomorphic(pg, _compile(swapped, inputs, compile_options)):
            raise SymmetryError(f"swap test: exchanging {a} and {b} changes the function, but the two "
                                "compiled graphs are isomorphic (a false symmetry)")
    return report


def assert_oracles(model: nn.Module, inputs: tuple, *, seed: int = 0, trials: int = 4,
                   max_pairs: int = 16, keep: tuple[str, ...] = (), **compile_options: Any) -> ParameterGraph:
    """Every oracle on a :func:`randomized` copy of ``model`` (drawn with ``seed``; ``model``
    itself is not changed): :func:`assert_round_trip`, then soundness (``trials`` random
    automorphisms) and completeness together (:func:`gmn_compiler.symmetry.check_symmetry`,
    which also runs the automorphisms extending declared symmetries when the group has too
    many generators to run them all), then :func:`assert_swap_faithful` (``max_pairs``). Every
    graph is compiled with ``compile_options``. Returns the graph of the randomized copy;
    raises :class:`SymmetryError` on the first failure. ``keep``: see :func:`randomized`."""
    base = randomized(model, seed, keep)
    pg = assert_round_trip(base, inputs, **compile_options)
    check_symmetry(base, inputs, trials=trials, seed=seed, graph=pg)
    assert_swap_faithful(base, inputs, max_pairs=max_pairs, seed=seed, keep=keep, **compile_options)
    return pg


check_round_trip = assert_round_trip
swap_test = assert_swap_faithful
check_all = assert_oracles
