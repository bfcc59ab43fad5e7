"""Parameters and norms along the head axes: a learned per-dim query scale and QK-norm
(LayerNorm / RMSNorm over each head's dims, one weight for all heads, as in Qwen3, OLMo 2 and
Gemma 3) shared by every head; cosine attention (a 2-norm per head, a logit scale per head).

Each entry meets one node per head. Permuting q/k dims is then a symmetry only when done
alike in every head, with the shared entries permuted too; the graph ties the copies of each
entry, so an automorphism cannot permute the dims of one head alone (before, it could, and
decompiling it gave the copies different values).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from oracles import (assert_isomorphic, assert_not_isomorphic, assert_oracles, assert_same_function,
                     functions_differ, permuted_copy)

DIM, HEADS, SEQ = 16, 2, 6
HEAD_DIM = DIM // HEADS
DIMS = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])


class SharedPerDim(nn.Module):
    """Attention whose q (``scale``) or q and k (``layer_norm``, ``rms_norm``) pass through a
    parameter of shape [head_dim] shared by the heads."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))
        if kind == "scale":
            self.scale = nn.Parameter(torch.rand(HEAD_DIM) + 0.5)
        else:
            norm = nn.LayerNorm if kind == "layer_norm" else nn.RMSNorm
            self.q_norm, self.k_norm = norm(HEAD_DIM), norm(HEAD_DIM)
            with torch.no_grad():
                for n in (self.q_norm, self.k_norm):
                    n.weight.copy_(torch.rand(HEAD_DIM) + 0.5)
                    if getattr(n, "bias", None) is not None:
                        n.bias.copy_(torch.randn(HEAD_DIM))

    def forward(self, x):
        b, t, c = x.shape
        split = lambda y: y.view(b, t, HEADS, HEAD_DIM)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.kind == "scale":
            q = q * self.scale
        else:
            q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(y.transpose(1, 2).reshape(b, t, c))

    def shared(self):
        return [self.scale] if self.kind == "scale" else [
            t for n in (self.q_norm, self.k_norm) for t in (n.weight, getattr(n, "bias", None)) if t is not None]


def _rows(*layers, perm):
    for layer in layers:
        layer.weight.copy_(layer.weight[perm])
        layer.bias.copy_(layer.bias[perm])


def qk_dims_in_every_head(m):
    _rows(m.q, m.k, perm=torch.cat([DIMS + h * HEAD_DIM for h in range(HEADS)]))
    for t in m.shared():
        t.copy_(t[DIMS])


def qk_dims_in_head_0_only(m):
    _rows(m.q, m.k, perm=torch.cat([DIMS, torch.arange(HEAD_DIM, DIM)]))
    for t in m.shared():
        t.copy_(t[DIMS])


def swap_heads(m):
    perm = torch.cat([torch.arange(HEAD_DIM, DIM), torch.arange(HEAD_DIM)])
    _rows(m.q, m.k, m.v, perm=perm)
    m.o.weight.copy_(m.o.weight[:, perm])


@pytest.mark.parametrize("kind", ["scale", "layer_norm", "rms_norm"])
def test_parameter_shared_by_heads_ties_their_dims(kind):
    torch.manual_seed(0)
    model, inputs = SharedPerDim(kind).eval(), (torch.randn(1, SEQ, DIM),)
    pg = assert_oracles(model, inputs, trials=6)
    declared = " ".join(s["what"] for s in pg.symmetries)
    assert "attention heads" in declared and "query/key dims" not in declared
    for symmetry in (qk_dims_in_every_head, swap_heads):
        permuted = permuted_copy(model, symmetry)
        assert_same_function(model, permuted, inputs)
        assert_isomorphic(pg, gc.compile(permuted, inputs))
    one_head = permuted_copy(model, qk_dims_in_head_0_only)  # the shared entries cannot follow
    assert functions_differ(model, one_head, inputs)
    assert_not_isomorphic(pg, gc.compile(one_head, inputs))


class CosineAttention(nn.Module):
    """Swin-v2-style cosine attention: q and k scaled to unit norm per head, scores times a
    learned per-head logit scale."""

    def __init__(self):
        super().__init__()
        self.qkv, self.o = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.logit_scale = nn.Parameter(torch.rand(HEADS, 1, 1) + 0.5)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * self.logit_scale
        return self.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c))


def test_cosine_attention_keeps_head_and_dim_symmetries():
    """The norm is per head and invariant to permuting its dims; the logit scale moves with
    its head. All three attention symmetries remain, and the oracles hold."""
    torch.manual_seed(0)
    model, inputs = CosineAttention().eval(), (torch.randn(1, SEQ, DIM),)
    pg = assert_oracles(model, inputs, trials=4)
    declared = " ".join(s["what"] for s in pg.symmetries)
    for claim in ("attention heads", "query/key dims within each head", "value dims within each head"):
        assert claim in declared


# ------------------------------------------------------------------ a modern decoder block
QH, QKV, QD, QC = 4, 2, 4, 12  # query heads, K/V heads, head dim, model width


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


class QwenLikeBlock(nn.Module):
    """Pre-norm decoder block as in Qwen3: RMSNorm, grouped-query attention with QK-norm and
    rotary embeddings (cached non-persistent tables), SwiGLU MLP, residual stream; between an
    input and an output projection."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(3, QC), nn.Linear(QC, 2)
        self.n1, self.n2 = nn.RMSNorm(QC), nn.RMSNorm(QC)
        self.q, self.o = nn.Linear(QC, QH * QD, bias=False), nn.Linear(QH * QD, QC, bias=False)
        self.k, self.v = nn.Linear(QC, QKV * QD, bias=False), nn.Linear(QC, QKV * QD, bias=False)
        self.q_norm, self.k_norm = nn.RMSNorm(QD), nn.RMSNorm(QD)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, QD, 2).float() / QD))
        angles = torch.outer(torch.arange(16).float(), inv_freq)
        table = torch.cat((angles, angles), -1)
        self.register_buffer("cos", table.cos(), persistent=False)
        self.register_buffer("sin", table.sin(), persistent=False)
        self.gate, self.up, self.down = (nn.Linear(QC, 16, bias=False), nn.Linear(QC, 16, bias=False),
                                         nn.Linear(16, QC, bias=False))
        with torch.no_grad():
            for norm in (self.n1, self.n2, self.q_norm, self.k_norm):
                norm.weight.copy_(torch.rand_like(norm.weight) + 0.5)

    def forward(self, x):
        x = self.inp(x)
        b, t, c = x.shape
        h = self.n1(x)
        q = self.q_norm(self.q(h).view(b, t, QH, QD)).transpose(1, 2)
        k = self.k_norm(self.k(h).view(b, t, QKV, QD)).transpose(1, 2)
        v = self.v(h).view(b, t, QKV, QD).transpose(1, 2)
        cos, sin = self.cos[:t], self.sin[:t]
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(QH // QKV, 1), v.repeat_interleave(QH // QKV, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, QH * QD)
        x = x + self.o(y)
        h = self.n2(x)
        return self.out(x + self.down(F.silu(self.gate(h)) * self.up(h)))


def test_qwen_like_decoder_block_passes_every_oracle():
    torch.manual_seed(0)
    pg = assert_oracles(QwenLikeBlock().eval(), (torch.randn(1, 5, 3),), trials=4)
    declared = " ".join(s["what"] for s in pg.symmetries)
    assert "attention heads (with their K/V head)" in declared and "value dims within each K/V head" in declared
    assert "query/key dims" not in declared  # rotary and the shared QK-norm weights fix them
