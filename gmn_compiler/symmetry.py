"""Correctness oracles 2 and 3 (DESIGN §4): soundness and completeness of a graph's symmetries.

- **Soundness**: a random automorphism of the graph's *structure* (every feature except the
  edge value) is found by individualization–refinement (:mod:`gmn_compiler.automorphisms`);
  each edge's value is moved along it, the result decompiled, loaded into a copy of the
  model and run. The outputs must equal the original's (checked in float64, or through
  onnxruntime for ONNX models).
- **Completeness**: for every set of nodes a rule declared permutable (hidden units of a
  linear layer, channels of a conv, within each group), a random permutation of the set must
  extend to an automorphism of the structure — and that automorphism must be sound too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import networkx as nx
import torch

from .automorphisms import random_automorphism
from .errors import DecompileError, SymmetryError
from .graph import ParameterGraph


@dataclass
class SymmetryReport:
    """What :func:`check_symmetry` verified."""

    automorphisms_checked: int
    identity_automorphisms: int
    symmetries_checked: list[str]
    max_abs_error: float


def structure_graph(pg: ParameterGraph) -> nx.DiGraph:
    """A simple digraph of the structure: node label = feature row; edge label = the sorted
    multiset of feature rows (without the value) of all parallel edges u -> v."""
    data = pg.data
    feats = data.edge_attr[:, 1:]
    _, feat_id = torch.unique(feats, dim=0, return_inverse=True)
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
    data = pg.data
    n = int(data.num_nodes)
    perm = torch.arange(n)
    perm[torch.tensor(list(mapping.keys()))] = torch.tensor(list(mapping.values()))
    _, fid = torch.unique(data.edge_attr[:, 1:], dim=0, return_inverse=True)
    nf = int(fid.max()) + 1 if fid.numel() else 1
    src, dst = data.edge_index
    key = (src * n + dst) * nf + fid
    moved = (perm[src] * n + perm[dst]) * nf + fid
    tie = torch.rand(key.numel(), generator=rng)
    order_old = _lexsort(key, tie)
    order_new = _lexsort(moved, torch.rand(key.numel(), generator=rng))
    if not torch.equal(key[order_old], moved[order_new]):
        raise SymmetryError("the node mapping is not an automorphism: some edge has no image")
    values = data.edge_attr[:, 0]
    out = values.clone()
    # edge order_new[k] (moved key) lands on the existing edge order_old[k] with that key
    out[order_old] = values[order_new]
    return out


def _lexsort(primary: torch.Tensor, secondary: torch.Tensor) -> torch.Tensor:
    first = torch.argsort(secondary, stable=True)
    return first[torch.argsort(primary[first], stable=True)]


def _run(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def outputs_with_values(model: torch.nn.Module, pg: ParameterGraph, values: torch.Tensor,
                        inputs: tuple, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Run a copy of ``model`` in ``dtype`` whose parameters come from ``values``."""
    state = pg.to_state_dict(values)
    clone = copy.deepcopy(model).to(dtype).eval()
    own = clone.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise SymmetryError(f"decompiled names {unknown[:3]} are not in the model's state dict")
    clone.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    return [t.double() for t in _run(clone, _cast(inputs, dtype))]


def _cast(inputs: tuple, dtype: torch.dtype) -> tuple:
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)


def torch_runner(model: torch.nn.Module, pg: ParameterGraph, inputs: tuple):
    """``(reference outputs, run(values) -> outputs, dtype)`` for a torch model: in float64,
    or in float32 when the model cannot run in float64 (it casts internally)."""
    for dtype in (torch.float64, torch.float32):
        try:
            reference = [t.double() for t in _run(copy.deepcopy(model).to(dtype).eval(), _cast(inputs, dtype))]
        except RuntimeError:
            if dtype == torch.float32:
                raise
            continue
        return reference, lambda values: outputs_with_values(model, pg, values, inputs, dtype), dtype


def onnx_runner(pg: ParameterGraph, inputs: dict | None = None, seed: int = 0):
    """``(reference outputs, run(values) -> outputs)`` through onnxruntime, for a graph
    compiled from ONNX. ``inputs`` maps input names to arrays (random when omitted)."""
    import numpy as np
    import onnxruntime as ort

    def session(model):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    base = session(pg.onnx_model)
    if inputs is None:
        rng = np.random.default_rng(seed)
        inputs = {}
        for i in base.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 2 for d in i.shape]
            inputs[i.name] = rng.standard_normal(shape).astype(np.float64 if "double" in i.type else np.float32)

    def run(model_session):
        return [torch.from_numpy(np.asarray(o)).double() for o in model_session.run(None, inputs)]

    return run(base), lambda values: run(session(pg.to_onnx_model(values)))


def check_symmetry(model, example_inputs=None, trials: int = 8, seed: int = 0, *,
                   graph: ParameterGraph | None = None, completeness: bool = True,
                   timeout: float = 30.0, rtol: float | None = None, atol: float | None = None) -> SymmetryReport:
    """Check that ``trials`` random structural automorphisms of the compiled graph preserve
    the model's function, and that every declared symmetry (hidden units, channels, groups)
    is an automorphism of the graph. Raises :class:`SymmetryError` naming the failure.

    ``model`` is an ``nn.Module`` (run in float64 with ``example_inputs``, a tuple) or an
    ONNX model (path or ``onnx.ModelProto``, run with onnxruntime in its own precision;
    ``example_inputs`` is then an optional ``{name: array}``).
    """
    from .api import compile as compile_model

    is_torch = isinstance(model, torch.nn.Module)
    pg = graph if graph is not None else compile_model(model, example_inputs if is_torch else None)
    if is_torch:
        reference, run, dtype = torch_runner(model, pg, example_inputs)
        tight = dtype == torch.float64
        rtol, atol = rtol or (1e-7 if tight else 1e-4), atol or (1e-9 if tight else 1e-5)
    else:
        reference, run = onnx_runner(pg, example_inputs, seed)
        rtol, atol = rtol or 1e-4, atol or 1e-5
    return _check(pg, reference, run, trials, seed, completeness, timeout, rtol, atol)


def _check(pg, reference, run, trials, seed, completeness, timeout, rtol, atol) -> SymmetryReport:
    rng = torch.Generator().manual_seed(seed)
    g = structure_graph(pg)
    checked, identities, worst = 0, 0, 0.0

    def verify(mapping: dict[int, int], what: str) -> None:
        nonlocal worst
        values = move_edge_values(pg, mapping, rng)
        try:
            outs = run(values)
        except DecompileError as exc:
            raise SymmetryError(f"{what} moves copies of a shared parameter apart: {exc}") from exc
        for ref, out in zip(reference, outs):
            err = float((ref - out).abs().max()) if ref.numel() else 0.0
            worst = max(worst, err)
            if not torch.allclose(ref, out, rtol=rtol, atol=atol):
                moved = sorted((u, v) for u, v in mapping.items() if u != v)[:6]
                raise SymmetryError(f"{what} is not function-preserving (max |Δ| = {err:.3g}); "
                                    f"it moves nodes {moved} …")

    for trial in range(trials):
        mapping = find_automorphism(g, rng, timeout=timeout)
        if mapping is None:
            raise SymmetryError(f"no automorphism found within {timeout}s (trial {trial})")
        if all(u == v for u, v in mapping.items()):
            identities += 1
        verify(mapping, f"random automorphism #{trial}")
        checked += 1
    described: list[str] = []
    if completeness:
        pinned = pinned_by_structure(pg)
        for sym in getattr(pg, "symmetries", []):
            ids = sym["nodes"]
            if bool(pinned[ids].any()):
                continue  # tied to model inputs/outputs: not a symmetry
            constraint = _random_group_permutation(ids, sym["groups"], sym.get("permute_groups", False), rng)
            mapping = find_automorphism(g, rng, constraint=constraint, timeout=timeout)
            if mapping is None:
                raise SymmetryError(f"missing symmetry: permuting {sym['what']} is not an automorphism of the graph")
            verify(mapping, f"the automorphism extending a permutation of {sym['what']}")
            described.append(sym["what"])
    return SymmetryReport(checked, identities, described, worst)


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


def _random_group_permutation(ids: torch.Tensor, groups: int, permute_groups: bool,
                              rng: torch.Generator) -> dict[int, int]:
    """Permute within each of ``groups`` consecutive blocks (and the blocks themselves)."""
    blocks = ids.view(groups, -1)
    if permute_groups:
        blocks = blocks[torch.randperm(groups, generator=rng)]
    images = torch.stack([b[torch.randperm(b.numel(), generator=rng)] for b in blocks])
    return dict(zip(ids.tolist(), images.reshape(-1).tolist()))
