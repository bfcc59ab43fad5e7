"""Rotary position embeddings (RoPE) inside attention.

RoPE rotates each pair of query/key dims of a head by an angle that depends on the token's
position and on the pair's frequency. Permuting heads, or the value dims inside a head, still
preserves the function; permuting query/key dims inside a head (even jointly, even whole
pairs) does not, since every pair has its own frequency. The cos/sin tables are constants
that vary along the head-dim axis: the compiler gives the nodes they multiply fixed
positions (their index in the head), repeated in every head, so heads stay interchangeable.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from oracles import (assert_isomorphic, assert_not_isomorphic, assert_oracles, assert_same_function,
                     functions_differ, permuted_copy)

DIM, HEADS, SEQ = 16, 2, 6
HEAD_DIM = DIM // HEADS


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryAttention(nn.Module):
    """Causal self-attention with RoPE in one of three spellings:

    - ``half``: Hugging Face / LLaMA ``rotate_half``, tables computed in forward from a
      non-persistent ``inv_freq`` buffer;
    - ``pairs``: adjacent dims paired (the complex-number form), via reshape(..., -1, 2);
    - ``cached``: ``half`` with cos/sin tables precomputed in non-persistent buffers.
    """

    def __init__(self, style: str, dim: int = DIM, heads: int = HEADS, max_len: int = 32):
        super().__init__()
        self.style, self.heads, self.head_dim = style, heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        angles = torch.outer(torch.arange(max_len).float(), inv_freq)
        table = torch.cat((angles, angles), -1)
        self.register_buffer("cos_cached", table.cos(), persistent=False)
        self.register_buffer("sin_cached", table.sin(), persistent=False)

    def rope(self, x: torch.Tensor, seq: int) -> torch.Tensor:
        if self.style == "cached":
            return x * self.cos_cached[:seq] + rotate_half(x) * self.sin_cached[:seq]
        angles = torch.outer(torch.arange(seq, dtype=torch.float32), self.inv_freq)
        if self.style == "half":
            table = torch.cat((angles, angles), -1)
            return x * table.cos() + rotate_half(x) * table.sin()
        pairs = x.reshape(*x.shape[:-1], -1, 2)
        x0, x1, cos, sin = pairs[..., 0], pairs[..., 1], angles.cos(), angles.sin()
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1).flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        split = lambda y: y.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        q, k = self.rope(q, t), self.rope(k, t)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, c))


STYLES = ["half", "pairs", "cached"]


def _make(style: str):
    torch.manual_seed(0)
    return RotaryAttention(style).eval(), (torch.randn(1, SEQ, DIM),)


def _head_perm(perm_heads: torch.Tensor) -> torch.Tensor:
    return (perm_heads.view(-1, 1) * HEAD_DIM + torch.arange(HEAD_DIM)).reshape(-1)


def _within_head_perm(perm_dims: torch.Tensor, head: int = 0) -> torch.Tensor:
    perm = torch.arange(DIM)
    perm[head * HEAD_DIM:(head + 1) * HEAD_DIM] = head * HEAD_DIM + perm_dims
    return perm


def _rows(*layers, perm):
    for layer in layers:
        layer.weight.copy_(layer.weight[perm])
        layer.bias.copy_(layer.bias[perm])


def permute_heads(m):
    perm = _head_perm(torch.tensor([1, 0]))
    _rows(m.q, m.k, m.v, perm=perm)
    m.o.weight.copy_(m.o.weight[:, perm])


def permute_v_dims(m):
    perm = _within_head_perm(torch.tensor([3, 0, 7, 1, 6, 2, 5, 4]))
    _rows(m.v, perm=perm)
    m.o.weight.copy_(m.o.weight[:, perm])


def permute_qk_dims_jointly(m):
    """A symmetry of plain attention, not of RoPE."""
    _rows(m.q, m.k, perm=_within_head_perm(torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])))


def swap_rotary_pairs(m):
    """Swap two whole rotation pairs of q and k (their frequencies differ)."""
    dims = (torch.tensor([1, 0, 2, 3, 5, 4, 6, 7]) if m.style != "pairs"
            else torch.tensor([2, 3, 0, 1, 4, 5, 6, 7]))
    _rows(m.q, m.k, perm=_within_head_perm(dims))


@pytest.mark.parametrize("style", STYLES)
def test_rotary_oracles(style):
    model, inputs = _make(style)
    pg = assert_oracles(model, inputs, trials=4)
    declared = " ".join(s["what"] for s in pg.symmetries)
    assert "attention heads" in declared and "value dims" in declared
    assert "query/key dims" not in declared  # RoPE fixes them
    report = gc.check_symmetry(model, inputs, trials=1, graph=pg)
    assert any("attention heads" in w for w in report.symmetries_checked)


@pytest.mark.parametrize("style", STYLES)
def test_rotary_tables_give_head_dims_fixed_positions_repeated_per_head(style):
    model, inputs = _make(style)
    pg = gc.compile(model, inputs)
    x = pg.data.x
    neuron = gc.schema.code(gc.schema.NODE_ROLES, "neuron")
    position = x[:, gc.schema.node_column("position")]
    pinned = position[(x[:, 0] == neuron) & (position >= 0)]
    counts = torch.bincount(pinned.long())
    # every index the table varies along (a dim of the head; a pair for ``pairs``) appears
    # once per head and per q/k, cos/sin product; model outputs add one each
    indices = HEAD_DIM // 2 if style == "pairs" else HEAD_DIM
    assert bool((counts[:indices] >= 2 * HEADS).all())


# ``pairs`` is left out here only because networkx's VF2 takes ~40 s on its graph; its
# completeness oracle (test_rotary_oracles) checks the same two symmetries as automorphisms.
@pytest.mark.parametrize("symmetry", [permute_heads, permute_v_dims])
@pytest.mark.parametrize("style", ["half", "cached"])
def test_rotary_symmetries_give_isomorphic_graphs(style, symmetry):
    model, inputs = _make(style)
    pg = gc.compile(model, inputs)
    permuted = permuted_copy(model, symmetry)
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


@pytest.mark.parametrize("change", [permute_qk_dims_jointly, swap_rotary_pairs])
@pytest.mark.parametrize("style", STYLES)
def test_rotary_qk_dim_permutations_change_function_and_graph(style, change):
    model, inputs = _make(style)
    pg = gc.compile(model, inputs)
    changed = permuted_copy(model, change)
    assert functions_differ(model, changed, inputs)
    assert_not_isomorphic(pg, gc.compile(changed, inputs))


def test_without_rotary_qk_dims_are_free_again():
    """Control: the same module with RoPE switched off declares the within-head q/k
    symmetry and the joint q/k permutation gives an isomorphic graph."""
    model, inputs = _make("half")
    model.rope = lambda x, seq: x
    pg = gc.compile(model, inputs)
    assert any("query/key dims" in s["what"] for s in pg.symmetries)
    permuted = permuted_copy(model, permute_qk_dims_jointly)
    permuted.rope = lambda x, seq: x
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


def test_constant_mask_over_features_pins_only_where_it_varies():
    """A constant that is equal along the feature axis leaves the hidden units free; one
    that varies pins them (the linear's hidden-unit symmetry is withdrawn)."""

    class Masked(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
            self.register_buffer("mask", mask, persistent=False)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) * self.mask)

    x = (torch.randn(3, 4),)
    flat = Masked(torch.full((6,), 0.5))
    varying = Masked(torch.tensor([1.0, 0.0, 2.0, 1.0, 3.0, 0.5]))
    declared = lambda pg: [s["what"] for s in pg.symmetries if "hidden units" in s["what"]]
    assert len(declared(assert_oracles(flat, x))) == 2
    assert len(declared(assert_oracles(varying, x))) == 1  # only the last layer's


@pytest.mark.parametrize("exporter", ["torchscript", "torchscript-folded", "dynamo", "dynamo-optimized"])
@pytest.mark.parametrize("style", ["half", "pairs", "cached"])
def test_onnx_rotary_attention_oracles(style, exporter, tmp_path):
    """RoPE through ONNX: the cos/sin tables arrive as Constant nodes, values folded from them,
    or (unoptimised dynamo) computed from ``inv_freq``, an initializer the file declares a
    non-persistent buffer; none is a weight, and like torch constants they pin the q/k dims they multiply
    (random automorphisms must preserve onnxruntime's outputs, which they did not while the
    tables were treated as movable weights), and heads and value dims stay permutable."""
    model, (x,) = _make(style)
    path = tmp_path / "rope.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter.startswith("dynamo"):
            torch.onnx.export(model, (x,), path, dynamo=True, optimize=exporter.endswith("optimized"), verbose=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, do_constant_folding=exporter.endswith("folded"))
    pg = gc.compile(str(path))
    report = gc.check_symmetry(str(path), trials=4, graph=pg)
    checked = " ".join(report.symmetries_checked)
    assert "attention heads" in checked and "value dims within each head" in checked
    assert "query/key dims" not in " ".join(s["what"] for s in pg.symmetries)
    assert _head_structure(pg) == _head_structure(gc.compile(model, (x,)))


def _head_structure(pg):
    """Numbers of head nodes, contract edges and head-membership edges."""
    d, code = pg.data, gc.schema.code
    role, etype = d.x[:, gc.schema.node_column("role")].long(), d.edge_attr[:, gc.schema.edge_column("type")].long()
    return (int((role == code(gc.schema.NODE_ROLES, "head")).sum()),
            int((etype == code(gc.schema.EDGE_TYPES, "contract")).sum()),
            int((etype == code(gc.schema.EDGE_TYPES, "head_member")).sum()))
