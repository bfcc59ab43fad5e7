"""Attention exported to ONNX by both exporters (TorchScript-based and dynamo), compiled from
the ONNX file: decomposed MatMul/Softmax attention gets the same head structure as from torch.

Oracles through onnxruntime: random automorphisms preserve the outputs, and the declared head,
q/k and v symmetries are automorphisms. Parity: hand-written attention gives a graph
isomorphic (all features, edge values included) to the torch graph; exporters decompose
``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention`` with extra scaling steps (the
scale split as sqrt on q and on k), which add one-to-one scalar nodes, so there the parity is
in the head structure: the same heads, the same contract and membership edges.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from oracles import assert_isomorphic

DIM, HEADS, SEQ = 16, 2, 5


class HandWritten(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.o = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def split(self, x):
        b, t, c = x.shape
        return self.qkv(x).view(b, t, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)

    def merge(self, y, x):
        return self.o(y.transpose(1, 2).reshape(x.shape))

    def forward(self, x):
        q, k, v = self.split(x)
        scores = (q @ k.transpose(-2, -1)) * (DIM // HEADS) ** -0.5
        return self.merge(scores.softmax(-1) @ v, x)


class Sdpa(HandWritten):
    def forward(self, x):
        q, k, v = self.split(x)
        return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True), x)


class Mha(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


SPELLINGS = {"hand-written": HandWritten, "sdpa": Sdpa, "mha": Mha}


def _export(model, x, path, dynamo: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), path, dynamo=True, optimize=False, verbose=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, do_constant_folding=False,
                              input_names=["x"])


def _counts(pg):
    d = pg.data
    role, etype = d.x[:, 0].long(), d.edge_attr[:, 1].long()
    code = gc.schema.code
    return (int((role == code(gc.schema.NODE_ROLES, "head")).sum()),
            int((etype == code(gc.schema.EDGE_TYPES, "contract")).sum()),
            int((etype == code(gc.schema.EDGE_TYPES, "head_member")).sum()))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_onnx_attention_oracles_and_parity(spelling, dynamo, tmp_path):
    torch.manual_seed(0)
    model, x = SPELLINGS[spelling]().eval(), torch.randn(1, SEQ, DIM)
    path = tmp_path / "attn.onnx"
    _export(model, x, path, dynamo)
    pg = gc.compile(str(path))
    report = gc.check_symmetry(str(path), trials=3, graph=pg)
    checked = " ".join(report.symmetries_checked)
    for claim in ("attention heads", "query/key dims within each head", "value dims within each head"):
        assert claim in checked, f"{claim} not declared from ONNX"
    from_torch = gc.compile(model, (x,))
    assert _counts(pg) == _counts(from_torch)
    assert _counts(pg)[0] == HEADS
    if spelling == "hand-written":
        assert_isomorphic(pg, from_torch)
    # decompile through ONNX: unedited values give the input model's initializers back
    state = pg.to_state_dict(pg.data.edge_attr[:, 0], include_constants=True)
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for name, tensor in state.items():
        if name in inits:
            assert torch.equal(tensor, torch.from_numpy(inits[name].copy())), name


class MergedTranspose(HandWritten):
    """kᵀ written over merged leading axes, as the dynamo exporter writes attention:
    ``reshape(transpose(reshape(k, [b*h, t, d]), 1, 2), [b, h, d, t])``."""

    def forward(self, x):
        q, k, v = self.split(x)
        b, h, t, d = k.shape
        kt = k.reshape(b * h, t, d).transpose(1, 2).reshape(b, h, d, t)
        scores = (q @ kt) * (DIM // HEADS) ** -0.5
        return self.merge(scores.softmax(-1) @ v, x)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_transpose_over_merged_axes_is_attention(dynamo, tmp_path):
    torch.manual_seed(0)
    plain, x = HandWritten().eval(), torch.randn(1, SEQ, DIM)
    merged = MergedTranspose().eval()
    merged.load_state_dict(plain.state_dict())
    from_torch = gc.compile(merged, (x,))
    assert_isomorphic(gc.compile(plain, (x,)), from_torch)
    path = tmp_path / "attn.onnx"
    _export(merged, x, path, dynamo)
    pg = gc.compile(str(path))
    assert_isomorphic(from_torch, pg)
    checked = " ".join(gc.check_symmetry(str(path), trials=3, graph=pg).symmetries_checked)
    assert "attention heads" in checked and "query/key dims within each head" in checked


class GroupedQuery(nn.Module):
    """Grouped-query attention (4 query heads, 2 K/V heads, HF's ``repeat_kv``); ``merged``
    writes kᵀ as the dynamo exporter does, over the merged ``[b, kv_heads, groups]`` axes."""

    def __init__(self, merged: bool):
        super().__init__()
        self.merged = merged
        self.q, self.k, self.v = nn.Linear(DIM, 16), nn.Linear(DIM, 8), nn.Linear(DIM, 8)
        self.o = nn.Linear(16, DIM)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 4, 4).transpose(1, 2)
        k = self.k(x).view(b, t, 2, 4).transpose(1, 2)[:, :, None].expand(b, 2, 2, t, 4)
        v = self.v(x).view(b, t, 2, 4).transpose(1, 2)[:, :, None].expand(b, 2, 2, t, 4).reshape(b, 4, t, 4)
        if self.merged:
            kt = k.reshape(b * 4, t, 4).transpose(1, 2).reshape(b, 4, 4, t)
        else:
            kt = k.reshape(b, 4, t, 4).transpose(-2, -1)
        probs = ((q @ kt) * 0.5).softmax(-1)
        return self.o((probs @ v).transpose(1, 2).reshape(b, t, 16))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_grouped_query_transpose_over_merged_axes(dynamo, tmp_path):
    torch.manual_seed(0)
    plain, x = GroupedQuery(merged=False).eval(), torch.randn(1, SEQ, DIM)
    merged = GroupedQuery(merged=True).eval()
    merged.load_state_dict(plain.state_dict())
    from_torch = gc.compile(merged, (x,))
    assert_isomorphic(gc.compile(plain, (x,)), from_torch)
    gc.check_symmetry(merged, (x,), trials=3, graph=from_torch)
    path = tmp_path / "gqa.onnx"
    _export(merged, x, path, dynamo)
    pg = gc.compile(str(path))
    assert_isomorphic(from_torch, pg)
    assert "attention heads" in " ".join(gc.check_symmetry(str(path), trials=3, graph=pg).symmetries_checked)
