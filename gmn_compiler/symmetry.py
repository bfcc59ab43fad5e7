"""Correctness oracles 2 and 3 (DESIGN §4): soundness and completeness of a graph's symmetries.

The *structure* of a graph is every feature except the values of parameter edges (values of
structural edges are constants of the computation and count as structure).

- **Soundness**: every generator of the structure's automorphism group (BLISS, exact; see
  :mod:`gmn_compiler.canonical`) and random products of them move each edge's value along
  them; the result is decompiled, loaded into a copy of the model and run. The outputs must
  equal the original's (checked in float64, or through onnxruntime for ONNX models). If
  every generator preserves the function, every automorphism does.
- **Completeness**: for every set of nodes a rule declared permutable (hidden units of a
  linear layer, channels of a conv, within each group), each adjacent transposition inside
  a block (and each swap of adjacent blocks, where whole blocks may move) must extend to an
  automorphism of the structure; BLISS proves it or proves that none exists. It needs only
  the graph: :func:`check_completeness` runs it alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import networkx as nx
import torch

from . import canonical, symmetry_proof
from .automorphisms import random_automorphism
from .errors import DecompileError, SymmetryError
from .graph import ParameterGraph
from .model_runs import agree, close_outputs, onnx_runner, torch_runner


@dataclass
class SymmetryReport:
    """What :func:`check_symmetry` verified."""

    automorphisms_checked: int
    identity_automorphisms: int
    symmetries_checked: list[str]
    max_abs_error: float
    proof: str = ""  # what stood for the whole automorphism group
    generators_checked: int = 0  # generators run through the model (random products aside)


def structure_graph(pg: ParameterGraph) -> nx.DiGraph:
    """A simple digraph of the structure: node label = feature row; edge label = the sorted
    multiset of the structural rows (features, and the value of non-parameter edges) of all
    parallel edges u -> v."""
    data = pg.data
    _, feat_id = torch.unique(canonical.edge_rows(pg), dim=0, return_inverse=True)
    src, dst = data.edge_index.tolist()
    labels: dict[tuple[int, int], list[int]] = {}
    for u, v, f in zip(src, dst, feat_id.tolist()):
        labels.setdefault((u, v), []).append(f)
    g = nx.DiGraph()
    for n, row in enumerate(data.x.tolist()):
        g.add_node(n, f=tuple(row))
    for (u, v), fs in labels.items():
        g.add_edge(u, v, f=tuple(sorted(fs)))
    return g


def find_automorphism(g: nx.DiGraph, rng: torch.Generator, *, constraint: dict[int, int] | None = None,
                      timeout: float | None = 30.0) -> dict[int, int] | None:
    """A random automorphism of ``g`` as ``{node: image}``; with ``constraint``
    (``{node: required image}``) one that extends it. ``None`` if none exists or none was
    found within ``timeout`` seconds (individualization–refinement, see
    :mod:`gmn_compiler.automorphisms`)."""
    return random_automorphism(g, rng, constraint=constraint, timeout=timeout)


def move_edge_values(pg: ParameterGraph, mapping: dict[int, int], rng: torch.Generator) -> torch.Tensor:
    """Edge values after moving each edge along the node automorphism ``mapping``. Parallel
    edges with identical structural features are matched at random. Raises
    :class:`SymmetryError` if ``mapping`` does not map edges to edges."""
    perm = torch.arange(pg.num_nodes)
    perm[torch.tensor(list(mapping.keys()), dtype=torch.long)] = torch.tensor(list(mapping.values()), dtype=torch.long)
    return move_values(pg, perm, rng)


def move_values(pg: ParameterGraph, perm: torch.Tensor, rng: torch.Generator | None,
                values: torch.Tensor | None = None) -> torch.Tensor:
    """``values`` (default: the graph's own edge values) after moving each edge along the node
    permutation ``perm`` (``perm[n]`` = image of node ``n``). Parallel edges with identical
    structural features are matched at random (``rng``), or in their order (``rng`` None).
    Raises :class:`SymmetryError` if ``perm`` does not map edges to edges."""
    key, order_old, repeats, nf = _edge_keys(pg)
    src, dst = pg.data.edge_index
    n = pg.num_nodes
    fid = canonical.edge_feature_ids(pg)
    values = pg.data.edge_attr[:, 0] if values is None else values
    out = values.clone()
    moving = perm != torch.arange(n)
    if int(moving.sum()) * 8 < n:
        # few nodes move (a transposition of units): only the edges touching them can move,
        # and they move among themselves
        edges = torch.nonzero(moving[src] | moving[dst]).view(-1)
        key = key[edges]
        order_old = None
    else:
        edges = None
    e_src, e_dst, e_fid = (src, dst, fid) if edges is None else (src[edges], dst[edges], fid[edges])
    moved = (perm[e_src] * n + perm[e_dst]) * nf + e_fid
    if rng is not None and repeats:  # shuffle which of the identical parallel edges goes where
        order_old = _lexsort(key, torch.rand(key.numel(), generator=rng))
        order_new = _lexsort(moved, torch.rand(key.numel(), generator=rng))
    else:
        order_old = torch.argsort(key, stable=True) if order_old is None else order_old
        order_new = torch.argsort(moved, stable=True)
    if not torch.equal(key[order_old], moved[order_new]):
        raise SymmetryError("the node mapping is not an automorphism: some edge has no image")
    if edges is not None:
        order_old, order_new = edges[order_old], edges[order_new]
    # edge order_new[k] (moved key) lands on the existing edge order_old[k] with that key
    out[order_old] = values[order_new]
    return out


def _edge_keys(pg: ParameterGraph) -> tuple[torch.Tensor, torch.Tensor, bool, int]:
    """Per edge its key (source, target, feature row id), the keys' stable sort order,
    whether some key repeats (identical parallel edges), and the number of feature ids;
    kept on the graph."""
    cached = pg._structure_cache.get("edge_keys")
    if cached is None:
        fid = canonical.edge_feature_ids(pg)
        nf = int(fid.max()) + 1 if fid.numel() else 1
        src, dst = pg.data.edge_index
        key = (src * pg.num_nodes + dst) * nf + fid
        order = torch.argsort(key, stable=True)
        sorted_key = key[order]
        repeats = bool((sorted_key[1:] == sorted_key[:-1]).any())
        cached = pg._structure_cache["edge_keys"] = (key, order, repeats, nf)
    return cached


def _lexsort(primary: torch.Tensor, secondary: torch.Tensor) -> torch.Tensor:
    first = torch.argsort(secondary, stable=True)
    return first[torch.argsort(primary[first], stable=True)]


def check_symmetry(model, example_inputs=None, trials: int = 8, seed: int = 0, *,
                   graph: ParameterGraph | None = None, completeness: bool = True,
                   timeout: float = 30.0, rtol: float | None = None, atol: float | None = None) -> SymmetryReport:
    """Check that every generator of the automorphism group of the compiled graph's
    structure (up to 256, spread evenly) and ``trials`` random automorphisms preserve the
    model's function, and that every declared symmetry (hidden units, channels, groups) is
    an automorphism of the graph (proved by BLISS). Raises :class:`SymmetryError` naming the
    failure.

    ``model`` is an ``nn.Module`` (run in float64 with ``example_inputs``, a tuple) or an
    ONNX model (path or ``onnx.ModelProto``, run with onnxruntime in its own precision;
    ``example_inputs`` is then an optional ``{name: array}``). Outputs agree entry by entry
    within ``rtol`` (default 1e-7) and ``atol`` (1e-9) in float64; in float32 (a model that casts
    internally, or ONNX) within ``atol`` (1e-5) + ``rtol`` (1e-4) times the largest magnitude of
    the output tensor, since reordered float32 sums differ by a few ulps of that scale.
    ``timeout`` is accepted for compatibility and unused: the searches are exact and never
    time out.
    """
    from .api import compile as compile_model

    is_torch = isinstance(model, torch.nn.Module)
    pg = graph if graph is not None else compile_model(model, example_inputs if is_torch else None)
    if is_torch:
        reference, run, dtype = torch_runner(model, pg, example_inputs)
        tight = dtype == torch.float64
        rtol, atol = rtol or (1e-7 if tight else 1e-4), atol or (1e-9 if tight else 1e-5)
        if graph is not None and not close_outputs(reference, run(pg.edge_values()), rtol, atol, not tight):
            raise ValueError("check_symmetry: graph= does not hold this model's parameter values (its "
                             "unpermuted edge values change the outputs); pass the graph compiled from "
                             "this very model, or none")
    else:
        reference, run = onnx_runner(pg, example_inputs, seed)
        rtol, atol, tight = rtol or 1e-4, atol or 1e-5, False
    return _check(pg, reference, run, trials, seed, completeness, timeout, rtol, atol, per_tensor=not tight)


def _check(pg, reference, run, trials, seed, completeness, timeout, rtol, atol, *,
           per_tensor: bool, max_generators: int = 256) -> SymmetryReport:
    """Soundness: automorphisms generating the structure's whole automorphism group must
    preserve the function -- the few witnesses of :mod:`gmn_compiler.symmetry_proof` where
    four group orders prove they generate it, otherwise every BLISS generator (up to
    ``max_generators``, spread evenly) -- and so must ``trials`` random products of them.
    Completeness: see :func:`check_completeness`."""
    rng = torch.Generator().manual_seed(seed)
    checked, identities, worst = 0, 0, 0.0

    def verify(perm: torch.Tensor, what: str) -> None:
        nonlocal worst
        values = move_values(pg, perm, rng)
        try:
            outs = run(values)
        except DecompileError as exc:
            raise SymmetryError(f"{what} moves copies of a shared parameter apart: {exc}") from exc
        for ref, out in zip(reference, outs):
            err = float((ref - out).abs().max()) if ref.numel() else 0.0
            worst = max(worst, err)
            if not agree(ref, out, rtol, atol, per_tensor):
                moved = [(u, int(v)) for u, v in enumerate(perm.tolist()) if u != v][:6]
                raise SymmetryError(f"{what} is not function-preserving (max |Δ| = {err:.3g}); "
                                    f"it moves nodes {moved} …")

    symmetries = free_declarations(pg)
    witnesses = symmetry_proof.find_witnesses(pg, symmetries) if symmetries else None
    if witnesses is not None and witnesses.sound:
        gens = chosen = [perm for perm, _ in witnesses.generators]
        for perm, what in witnesses.generators:
            verify(perm, what)
        proof = (f"{len(gens)} witnesses generate all {_order(witnesses.orders['A'])} automorphisms "
                 "(|A| |A_S| = |A_B| |A_P|)")
        all_generators_checked = True
    else:
        gens = canonical.automorphism_generators(pg)
        chosen = gens if len(gens) <= max_generators else [
            gens[i] for i in torch.linspace(0, len(gens) - 1, max_generators).round().long().unique().tolist()]
        for k, perm in enumerate(chosen):
            verify(perm, f"automorphism group generator #{k}")
        all_generators_checked = len(chosen) == len(gens)
        proof = f"{len(chosen)} of {len(gens)} BLISS generators"
    n = int(pg.data.num_nodes)
    for trial in range(trials):
        perm = torch.arange(n)
        for _ in range(min(4 * len(gens), 64)) if gens else ():
            g = gens[int(torch.randint(len(gens), (1,), generator=rng))]
            perm = g[perm]
        if torch.equal(perm, torch.arange(n)):
            identities += 1
        verify(perm, f"random automorphism #{trial}")
        checked += 1
    described = (check_completeness(pg, None if all_generators_checked else verify, witnesses=witnesses)
                 if completeness else [])
    return SymmetryReport(checked, identities, described, worst, proof, len(chosen))


def _order(n: int) -> str:
    """``n`` written out when short, else its power of ten."""
    return str(n) if n < 10 ** 12 else f"~10^{int(n.bit_length() * math.log10(2))}"


def free_declarations(pg: ParameterGraph) -> list[dict]:
    """The declared symmetries whose units can move: those tied to model inputs/outputs
    (:func:`pinned_by_structure`) are left out."""
    pinned = pinned_by_structure(pg)
    return [s for s in getattr(pg, "symmetries", []) if not bool(pinned[s["nodes"]].any())]


def check_completeness(pg: ParameterGraph, verify: Callable[[torch.Tensor, str], None] | None = None,
                       witnesses: symmetry_proof.Witnesses | None = None) -> list[str]:
    """Completeness alone (no model is run): every adjacent transposition inside each block of
    every declared symmetry of ``pg`` (and every swap of adjacent blocks, where whole blocks
    may move) must extend to an automorphism of the structure that fixes the symmetry's other
    units. Declarations tied to model inputs/outputs are skipped. ``verify(perm, what)``, when
    given, is also called on the automorphisms that prove it (soundness of the declarations).
    Returns the descriptions of the symmetries checked; raises :class:`SymmetryError`
    ("missing symmetry (proved): ...") on the first one the graph lacks.

    Most of it is proved by the few witnesses of :mod:`gmn_compiler.symmetry_proof`
    (``witnesses``, found when not given) or, where they do not exist, by one BLISS call for
    all blocks (:func:`~gmn_compiler.canonical.transposition_witnesses`); the rest costs a BLISS
    call per adjacent transposition (an exact answer either way)."""
    symmetries = free_declarations(pg)
    if witnesses is None and symmetries:
        witnesses = symmetry_proof.find_witnesses(pg, symmetries)
    if witnesses is not None:
        if verify is not None:
            for perm, what in witnesses.generators:
                verify(perm, what)
        proved = [symmetry_proof.proved_parts(witnesses, sym) for sym in symmetries]
    else:
        proved = _proved_by_one_call(pg, symmetries, verify)
    described: list[str] = []
    extender = canonical.Extender.of(pg)
    for sym, (complete, swaps) in zip(symmetries, proved):
        rows = sym["nodes"].view(sym["groups"], -1).tolist()
        checks = [(f"swapping units {i} and {i + 1} of block {b}", [block[i]], [block[i + 1]])
                  for b, block in enumerate(rows) if not complete[b] for i in range(len(block) - 1)]
        if sym.get("permute_groups", False) and not swaps:
            checks += [(f"swapping blocks {b} and {b + 1}", rows[b], rows[b + 1]) for b in range(len(rows) - 1)]
        for what, a, b in checks:
            perm = extender.swap(sym["nodes"].tolist(), a, b)
            if perm is None:
                raise SymmetryError(f"missing symmetry (proved): {what} of {sym['what']} is not an "
                                    "automorphism of the graph")
            if verify is not None:
                verify(perm, f"the automorphism extending {what} of {sym['what']}")
        described.append(sym["what"])
    return described


def _proved_by_one_call(pg, symmetries, verify) -> list[tuple[list[bool], bool]]:
    """Per declaration, which blocks one BLISS call proves complete
    (:func:`~gmn_compiler.canonical.transposition_witnesses`; its witnesses are verified);
    block swaps are left to per-swap calls."""
    grids = [s["nodes"].view(s["groups"], -1) for s in symmetries]
    out = []
    for sym, grid, found in zip(symmetries, grids, canonical.transposition_witnesses(pg, grids) if grids else []):
        rows = grid.tolist()
        complete = [len(found[b]) == len(block) - 1 for b, block in enumerate(rows)]
        for b, block in enumerate(rows):
            for perm, u, v in found[b] if complete[b] and verify is not None else ():
                verify(perm, f"the automorphism exchanging units {block.index(u)} and "
                             f"{block.index(v)} of block {b} of {sym['what']}")
        out.append((complete, False))
    return out


def pinned_by_structure(pg: ParameterGraph) -> torch.Tensor:
    """Per node: whether structural (parameter-free) edges connect it to a node of a model
    input or output (fixed positions that no permutation moves; positions a constant gives,
    as rotary tables do, repeat across heads and do not count). Such nodes cannot move alone — e.g. the hidden units of
    a last linear layer whose outputs reach the model output through an activation copy."""
    d = pg.data
    n = int(d.num_nodes)
    position = d.x[:, 2]
    label = torch.arange(n)
    structural = d.edge_param < 0
    src, dst = d.edge_index[0, structural], d.edge_index[1, structural]
    while True:  # connected components by min-label propagation
        new = label.clone()
        new.scatter_reduce_(0, dst, label[src], "amin")
        new.scatter_reduce_(0, src, label[dst], "amin")
        new = new[new]
        if torch.equal(new, label):
            break
        label = new
    pinned_label = torch.zeros(n, dtype=torch.bool)
    io = pg.io_nodes if pg.io_nodes is not None else torch.nonzero(position >= 0).view(-1)
    pinned_label[label[io]] = True
    return pinned_label[label]
