"""Shared oracle assertions (DESIGN §4) used by every rule's tests."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import networkx as nx
import torch
from networkx.algorithms import isomorphism

import gmn_compiler as gc
from gmn_compiler.graph import ParameterGraph


def randomize_buffers(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give norm layers non-trivial affine parameters and running statistics, so that the
    oracles see them (defaults of 1/0 would hide swapped edges)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        for name in ("running_mean",):
            if getattr(m, name, None) is not None:
                getattr(m, name).copy_(torch.randn(getattr(m, name).shape, generator=g))
        if getattr(m, "running_var", None) is not None:
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        if isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)):
            if getattr(m, "weight", None) is not None:
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model


def assert_round_trip(model: torch.nn.Module, inputs: tuple, **options) -> ParameterGraph:
    """Oracle 1: decompiling the unedited edge values reproduces every parameter and buffer
    the graph represents, bit for bit; and every parameter of the model is represented."""
    pg = gc.compile(model, inputs, **options)
    state = pg.to_state_dict(pg.data.edge_attr[:, 0])
    reference = model.state_dict()
    for name, tensor in state.items():
        assert name in reference, name
        assert tensor.dtype == reference[name].dtype, name
        assert torch.equal(tensor, reference[name]), f"{name} differs after the round trip"
    params = {n for n, _ in model.named_parameters()}
    missing = params - set(state)
    assert not missing, f"parameters not represented: {sorted(missing)}"
    _check_schema(pg)
    return pg


def _check_schema(pg: ParameterGraph) -> None:
    d = pg.data
    assert d.x.shape == (d.num_nodes, len(gc.schema.NODE_COLUMNS))
    assert d.edge_attr.shape == (d.edge_index.shape[1], len(gc.schema.EDGE_COLUMNS))
    assert d.edge_index.dtype == torch.long
    assert int(d.edge_index.min()) >= 0 and int(d.edge_index.max()) < d.num_nodes
    structural = d.edge_param < 0
    assert bool((d.edge_offset[structural] == -1).all())
    assert bool((d.edge_offset[~structural] >= 0).all())


def assert_oracles(model: torch.nn.Module, inputs: tuple, trials: int = 4, seed: int = 0,
                   completeness: bool = True) -> ParameterGraph:
    """Oracles 1-3: round trip, soundness of random automorphisms, declared symmetries."""
    model = model.eval()
    pg = assert_round_trip(model, inputs)
    report = gc.check_symmetry(model, inputs, trials=trials, seed=seed, graph=pg,
                               completeness=completeness)
    assert report.automorphisms_checked == trials
    return pg


def full_graph(pg: ParameterGraph) -> nx.DiGraph:
    """Simple digraph whose labels include edge values (multiset per node pair)."""
    d = pg.data
    g = nx.DiGraph()
    for n, row in enumerate(d.x.tolist()):
        g.add_node(n, f=tuple(row))
    labels: dict = {}
    for (u, v), row in zip(d.edge_index.t().tolist(), d.edge_attr.tolist()):
        labels.setdefault((u, v), []).append(tuple(row))
    for (u, v), rows in labels.items():
        g.add_edge(u, v, f=tuple(sorted(rows)))
    return g


def assert_isomorphic(a: ParameterGraph, b: ParameterGraph) -> None:
    """The two graphs are isomorphic with every feature, edge values included."""
    ga, gb = full_graph(a), full_graph(b)
    match = isomorphism.DiGraphMatcher(ga, gb, node_match=lambda x, y: x["f"] == y["f"],
                                       edge_match=lambda x, y: x["f"] == y["f"])
    assert match.is_isomorphic(), "graphs are not isomorphic"


def assert_not_isomorphic(a: ParameterGraph, b: ParameterGraph) -> None:
    ga, gb = full_graph(a), full_graph(b)
    match = isomorphism.DiGraphMatcher(ga, gb, node_match=lambda x, y: x["f"] == y["f"],
                                       edge_match=lambda x, y: x["f"] == y["f"])
    assert not match.is_isomorphic(), "graphs are isomorphic"


def permuted_copy(model: torch.nn.Module, permute) -> torch.nn.Module:
    """A deep copy of ``model`` with ``permute(copy)`` applied to its weights in place."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        permute(clone)
    return clone


def assert_same_function(a: torch.nn.Module, b: torch.nn.Module, inputs: tuple) -> None:
    with torch.no_grad():
        ya, yb = a.eval()(*inputs), b.eval()(*inputs)
    for ta, tb in zip(torch.utils._pytree.tree_leaves(ya), torch.utils._pytree.tree_leaves(yb)):
        torch.testing.assert_close(ta, tb, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- hand-written permutations
def functions_differ(a: torch.nn.Module, b: torch.nn.Module, inputs: tuple) -> bool:
    with torch.no_grad():
        return not torch.allclose(a.eval()(*inputs), b.eval()(*inputs), atol=1e-5)


def permute_rows(layer: torch.nn.Module, p: torch.Tensor) -> None:
    """Permute a layer's output units: weight rows (and bias)."""
    layer.weight.copy_(layer.weight[p])
    if getattr(layer, "bias", None) is not None:
        layer.bias.copy_(layer.bias[p])


def permute_cols(layer: torch.nn.Module, p: torch.Tensor) -> None:
    """Permute a layer's input units: weight columns."""
    layer.weight.copy_(layer.weight[:, p])


def permute_norm(norm: torch.nn.Module, p: torch.Tensor) -> None:
    """Permute every per-channel tensor of a normalisation layer."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensor = getattr(norm, name, None)
        if tensor is not None:
            tensor.copy_(tensor[p])


def assert_symmetry(model, pg: ParameterGraph, inputs: tuple, permute) -> None:
    """``permute`` (applied to a copy's weights) keeps the function and gives an isomorphic graph."""
    permuted = permuted_copy(model, permute)
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


def assert_not_symmetry(model, pg: ParameterGraph, inputs: tuple, change) -> None:
    """``change`` alters the function, and the graph tells: not isomorphic."""
    changed = permuted_copy(model, change)
    assert functions_differ(model, changed, inputs)
    assert_not_isomorphic(pg, gc.compile(changed, inputs))


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path, input_name: str = "x", dynamo: bool = True) -> None:
    """``torch.onnx.export(model, (x,), path)`` as a user calls it (its defaults: the dynamo
    exporter and optimizer), or with the TorchScript exporter at opset 18; quietly."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            options = {} if dynamo else {"dynamo": False, "opset_version": 18}
            torch.onnx.export(model, (x,), str(path), input_names=[input_name], **options)
    finally:
        logging.disable(logging.NOTSET)
