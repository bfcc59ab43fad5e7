"""Issue 19's families of false symmetries, one small model each: every graph must pass
round trip, soundness of every automorphism-group generator, completeness and the swap test
(:func:`gmn_compiler.testing.check_all`). Families still open are ``xfail(strict=True)``, so
they fail loudly once fixed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gmn_compiler.testing import check_all

D = 6
class TokSel(nn.Module):  # A
    def __init__(s): super().__init__(); s.a = nn.Linear(D, 3); s.b = nn.Linear(D, 3); s.e = nn.Linear(4, D)
    def forward(s, x): h = s.e(x); return (s.a(h[:, 0]) + s.b(h[:, 1])) / 2
class Slices(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(D, 3); s.b = nn.Linear(D, 3); s.e = nn.Linear(4, D)
    def forward(s, x): h = s.e(x); return s.a(h[:, 1:]) + s.b(h[:, :-1])
class Flip(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(D, 3); s.b = nn.Linear(D, 3); s.e = nn.Linear(4, D)
    def forward(s, x): h = s.e(x); return s.a(h) + s.b(h.flip(1))
class Roll(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(D, 3); s.b = nn.Linear(D, 3); s.e = nn.Linear(4, D)
    def forward(s, x): h = s.e(x); return s.a(h) + s.b(torch.roll(h, 1, 1))
class Corner(nn.Module):
    def __init__(s): super().__init__(); s.c = nn.Conv2d(2, 4, 3); s.a = nn.Linear(4, 3); s.b = nn.Linear(4, 3)
    def forward(s, x): f = s.c(x); return s.a(f[..., 0, 0]) + s.b(f[..., -1, -1])
class SpatialT(nn.Module):
    def __init__(s): super().__init__(); s.c = nn.Conv2d(2, 4, 1); s.a = nn.Conv2d(4, 3, 3); s.b = nn.Conv2d(4, 3, 3)
    def forward(s, x): f = s.c(x); return s.a(f) + s.b(f.transpose(2, 3))
class CatViews(nn.Module):  # B
    def __init__(s): super().__init__(); s.e = nn.Linear(4, D); s.l = nn.Linear(2 * D, 3)
    def forward(s, x): h = s.e(x); return s.l(torch.cat([h[:, 0::2], h[:, 1::2]], -1))
class Fourier(nn.Module):
    def __init__(s): super().__init__(); s.e = nn.Linear(2, D); s.l = nn.Linear(2 * D, 3)
    def forward(s, x): h = s.e(x); return s.l(torch.cat([torch.sin(h), torch.cos(h)], -1))
class SoftmaxAxis(nn.Module):  # C
    def __init__(s): super().__init__(); s.a = nn.Linear(D, 3); s.b = nn.Linear(D, 3); s.e = nn.Linear(4, D)
    def forward(s, x): h = s.e(x); return s.a(h.softmax(-1)) + s.b(h.softmax(1))
class LNAxis(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(D, 3); s.b = nn.Linear(D, 3); s.e = nn.Linear(4, D)
    def forward(s, x): h = s.e(x); return s.a(F.layer_norm(h, (D,))) + s.b(F.layer_norm(h.transpose(1, 2), (3,)).transpose(1, 2))
class MeanHW(nn.Module):
    def __init__(s): super().__init__(); s.c = nn.Conv2d(2, 4, 3); s.a = nn.Linear(4, 3); s.b = nn.Linear(4, 3)
    def forward(s, x): f = s.c(x); return s.a(f.mean(2).mean(-1)) + s.b(f.mean(3).amax(-1))
class MeanHW2(nn.Module):
    def __init__(s): super().__init__(); s.c = nn.Conv2d(2, 4, 3); s.a = nn.Conv1d(4, 3, 2); s.b = nn.Conv1d(4, 3, 2)
    def forward(s, x): f = s.c(x); return s.a(f.mean(2)).sum(-1) + s.b(f.mean(3)).sum(-1)
class Leaky(nn.Module):  # D
    def __init__(s): super().__init__(); s.a = nn.Linear(D, 3); s.b = nn.Linear(D, 3); s.e = nn.Linear(4, D)
    def forward(s, x): h = s.e(x); return s.a(F.leaky_relu(h, 0.1)) + s.b(F.leaky_relu(h, 0.3))
class Dil(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Conv2d(2, 3, 3, padding=1); s.b = nn.Conv2d(2, 3, 3, padding=2, dilation=2)
    def forward(s, x): return s.a(x) + s.b(x)
class Pools(nn.Module):
    def __init__(s): super().__init__(); s.c = nn.Conv2d(2, 3, 1); s.a = nn.Conv2d(3, 2, 1); s.b = nn.Conv2d(3, 2, 1)
    def forward(s, x): f = s.c(x); return s.a(F.max_pool2d(f, 3, 1, 1)) + s.b(F.max_pool2d(f, 5, 1, 2))
class LNEps(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(D, 3); s.b = nn.Linear(D, 3); s.e = nn.Linear(4, D)
    def forward(s, x): h = s.e(x); return s.a(F.layer_norm(h, (D,), eps=1e-5)) + s.b(F.layer_norm(h, (D,), eps=1.0))
class ConstTok(nn.Module):  # E
    def __init__(s): super().__init__(); s.a = nn.Linear(D, 3); s.b = nn.Linear(D, 3); s.e = nn.Linear(4, D)
    def forward(s, x):
        h = s.e(x); t = torch.arange(x.shape[1], dtype=x.dtype)[None, :, None]
        return s.a(h * torch.cos(t)) + s.b(h * torch.sin(t + 1))
class ScalarAdd(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(D, 3); s.b = nn.Linear(D, 3); s.e = nn.Linear(4, D)
    def forward(s, x): h = s.e(x); return s.a(torch.relu(h + 1)) + s.b(torch.relu(h + 2.5))
class ChanConst(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(3, 2); s.b = nn.Linear(3, 2); s.e = nn.Linear(4, 3)
    def forward(s, x): h = s.e(x); return s.a(h * torch.tensor([1., 2., 3.])) + s.b(h * torch.tensor([3., 2., 1.]))
class Reduce(nn.Module):  # F
    def __init__(s): super().__init__(); s.a = nn.Linear(4, D); s.b = nn.Linear(4, D)
    def forward(s, x): return s.a(x).amax(-1) + s.b(x).sum(-1)
class Emb2(nn.Module):  # G
    def __init__(s): super().__init__(); s.a = nn.Embedding(5, 3); s.b = nn.Embedding(5, 3); s.l = nn.Linear(3, 2)
    def forward(s, i, j): return s.l(s.a(i) + s.b(j) * 2)
class Emb2b(nn.Module):  # G
    def __init__(s): super().__init__(); s.a = nn.Embedding(5, 3); s.b = nn.Embedding(5, 3); s.l = nn.Linear(3, 2); s.m = nn.Linear(3, 2)
    def forward(s, i, j): return s.l(s.a(i)) + s.m(s.b(j)) * i[..., None]
class Emb2c(nn.Module):  # G: two equal tables read by two id inputs, nothing else differs
    def __init__(s): super().__init__(); s.a = nn.Embedding(5, 3); s.b = nn.Embedding(5, 3); s.l = nn.Linear(3, 2)
    def forward(s, i, j): return s.l(s.a(i) + s.b(j))
class Causal(nn.Module):
    def __init__(s): super().__init__(); s.q = nn.Linear(D, D); s.k = nn.Linear(D, D); s.v = nn.Linear(D, D); s.q2 = nn.Linear(D, D)
    def forward(s, x):
        q, k, v = s.q(x), s.k(x), s.v(x)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True) + F.scaled_dot_product_attention(s.q2(x), k, v)

class MaskedPair(nn.Module):  # E: constant masks that differ only in content
    def __init__(s): super().__init__(); s.q = nn.Linear(D, D); s.k = nn.Linear(D, D); s.v = nn.Linear(D, D); s.q2 = nn.Linear(D, D)
    def forward(s, x):
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        q, k, v = s.q(x), s.k(x), s.v(x)
        return (F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
                + F.scaled_dot_product_attention(s.q2(x), k, v, attn_mask=causal.T.contiguous()))

# I: declarations narrowed by later ops on tied units (residual add, cat, gate, then groups)
class ResGN(nn.Module):  # residual add then GroupNorm
    def __init__(s): super().__init__(); s.c0 = nn.Conv2d(2, 4, 1); s.c1 = nn.Conv2d(4, 4, 1); s.gn = nn.GroupNorm(2, 4); s.out = nn.Conv2d(4, 2, 1)
    def forward(s, x): h = s.c0(x); y = h + s.c1(torch.relu(h)); return s.out(s.gn(y))
class CatGN(nn.Module):  # UNet skip cat then GroupNorm
    def __init__(s): super().__init__(); s.a = nn.Conv2d(2, 4, 1); s.b = nn.Conv2d(2, 2, 1); s.gn = nn.GroupNorm(3, 6); s.out = nn.Conv2d(6, 2, 1)
    def forward(s, x): return s.out(s.gn(torch.cat([s.a(x), s.b(x)], 1)))
class Partial(nn.Module):  # FasterNet partial conv
    def __init__(s): super().__init__(); s.a = nn.Conv2d(2, 6, 1); s.p = nn.Conv2d(2, 2, 3, padding=1); s.out = nn.Conv2d(6, 2, 1)
    def forward(s, x):
        h = s.a(x); y = torch.cat([s.p(h[:, :2]), h[:, 2:]], 1); return s.out(y)
class Inception(nn.Module):  # split into branches
    def __init__(s): super().__init__(); s.a = nn.Conv2d(2, 6, 1); s.b1 = nn.Conv2d(2, 2, 3, padding=1); s.b2 = nn.Conv2d(2, 2, (1, 3), padding=(0, 1)); s.out = nn.Conv2d(6, 2, 1)
    def forward(s, x):
        h = s.a(x); u, v, w = torch.split(h, [2, 2, 2], 1); return s.out(torch.cat([s.b1(u), s.b2(v), w], 1))
class SEGrouped(nn.Module):  # RegNetY SE over grouped conv
    def __init__(s): super().__init__(); s.a = nn.Conv2d(2, 4, 1); s.g = nn.Conv2d(4, 4, 3, padding=1, groups=2); s.se1 = nn.Conv2d(4, 2, 1); s.se2 = nn.Conv2d(2, 4, 1); s.out = nn.Conv2d(4, 2, 1)
    def forward(s, x):
        h = torch.relu(s.g(s.a(x))); g = torch.sigmoid(s.se2(torch.relu(s.se1(h.mean((2, 3), keepdim=True))))); return s.out(h * g)
class ResGroupedConv(nn.Module):  # residual add then grouped conv
    def __init__(s): super().__init__(); s.a = nn.Conv2d(2, 4, 1); s.b = nn.Conv2d(4, 4, 1); s.g = nn.Conv2d(4, 4, 1, groups=2); s.out = nn.Conv2d(4, 2, 1)
    def forward(s, x): h = s.a(x); y = h + s.b(h); return s.out(s.g(y))
# K: found by the fuzzer (gmn_compiler.fuzz) after the families above were fixed
class WherePair(nn.Module):  # constant masks over (H, W) that differ only in content
    def __init__(s):
        super().__init__(); s.c = nn.Conv2d(2, 3, 1); s.d = nn.Conv2d(2, 3, 1)
        s.register_buffer("causal", torch.ones(4, 4, dtype=torch.bool).tril())
    def forward(s, x): return s.c(torch.where(s.causal, x, -1.0)) + s.d(torch.where(s.causal.T.contiguous(), x, -1.0))
class MaskedFillSide(nn.Module):  # masked_fill(m, v) is where(m, v, x): not where(m, x, v)
    def __init__(s):
        super().__init__(); s.c = nn.Conv2d(2, 3, 1); s.d = nn.Conv2d(2, 3, 1)
        s.register_buffer("m", torch.ones(4, 4, dtype=torch.bool).tril())
    def forward(s, x): return s.c(x.masked_fill(s.m, 0.5)) + s.d(torch.where(s.m, x, 0.5))
class ConstBias(nn.Module):  # a plain tensor attribute added after a bias-free linear
    def __init__(s):
        super().__init__(); s.e = nn.Linear(4, 2); s.a = nn.Linear(2, 2, bias=False); s.b = nn.Linear(2, 2, bias=False)
        s.o = nn.Linear(2, 1); s.va, s.vb = torch.tensor([-0.5, 1.5]), torch.tensor([-1.0, -1.5])
    def forward(s, x): h = s.e(x); return s.o((s.a(h) + s.va) + (s.b(h) + s.vb))
class TiedThenConst(nn.Module):  # units tied by a residual add, then told apart by a constant
    def __init__(s): super().__init__(); s.a = nn.Linear(2, 3); s.o = nn.Linear(3, 1); s.v = torch.tensor([1.0, 2.0, 3.0])
    def forward(s, x): c = s.a(x); return s.o((c + c) + s.v)
class GroupedTied(nn.Module):  # a grouped conv over fixed channels fixes the units a residual add ties to it
    def __init__(s): super().__init__(); s.g = nn.Conv1d(2, 2, 3, padding=1, groups=2, bias=False); s.f = nn.Conv1d(2, 2, 3, padding=1, bias=False); s.o = nn.Conv1d(2, 1, 1)
    def forward(s, x): h = x.transpose(1, 2); return s.o(s.g(h) + s.f(h))
class TokenTableCat(nn.Module):  # a table over tokens after a cat of two blocks along tokens
    def __init__(s): super().__init__(); s.e = nn.Linear(2, 5, bias=False); s.a = nn.Linear(5, 5); s.b = nn.Linear(5, 5)
    def forward(s, x):
        h = s.e(x); t = torch.sin(torch.arange(5.0))[None, :, None]
        return torch.cat([s.a(h[:, 0:2]), s.b(h)], 1) * t
class OneElementConsts(nn.Module):  # constants of one element that differ only in magnitude
    def __init__(s): super().__init__(); s.a = nn.Conv2d(1, 3, 1); s.b = nn.Conv2d(1, 3, 1); s.u, s.v = torch.tensor([0.7]), torch.tensor([1.3])
    def forward(s, x): return s.a(x * s.u.view(1, 1, 1, 1)) + s.b(x * s.v.view(1, 1, 1, 1))
class GateByStats(nn.Module):  # units times a cat of two different reductions over them
    def __init__(s): super().__init__(); s.a = nn.Linear(1, 2, bias=False); s.o = nn.Linear(2, 1, bias=False)
    def forward(s, x): h = s.a(x); return s.o(h * torch.cat([h.sum(1, keepdim=True), h.mean(1, keepdim=True)], 1))
class FlatResidual(nn.Module):  # a linear's units added to positions of flattened channels
    def __init__(s): super().__init__(); s.c = nn.Conv1d(1, 2, 3, padding=1, bias=False); s.l = nn.Linear(10, 10, bias=False); s.o = nn.Linear(10, 1, bias=False)
    def forward(s, x): h = s.c(x).flatten(1); return s.o(h + s.l(h))
class GroupNorm2d(nn.Module):  # GroupNorm over [N, C] (the exporter writes reshape + InstanceNorm)
    def __init__(s): super().__init__(); s.a = nn.Linear(4, 6); s.g = nn.GroupNorm(3, 6, eps=0.01); s.o = nn.Linear(6, 2)
    def forward(s, x): return s.o(s.g(s.a(x)))
class CrossAttnPinnedQuery(nn.Module):  # q/k/v rows of one in_proj read different inputs
    def __init__(s):
        super().__init__(); s.a = nn.Linear(1, 4, bias=False); s.b = nn.Linear(4, 4, bias=False)
        s.m = nn.MultiheadAttention(4, 2, bias=False, batch_first=True); s.v = torch.tensor([0.5, -1.0, 2.0, 0.25])
    def forward(s, x): h = s.a(x) + s.v; return s.m(h, s.b(h), s.b(h), need_weights=False)[0]
class HeadsThenPinned(nn.Module):  # a constant over features after attention fixes the heads' value dims
    def __init__(s):
        super().__init__(); s.q, s.k, s.v = nn.Linear(2, 4), nn.Linear(2, 4), nn.Linear(2, 4); s.o = nn.Linear(4, 1)
        s.c = torch.tensor([0.5, -1.0, 2.0, 0.25])
    def forward(s, x):
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, 2, 2).transpose(1, 2) for f in (s.q, s.k, s.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 4)
        return s.o(y + s.c)
class InputPlusEmbeddingMean(nn.Module):  # fuzz seed 3 #254: x's free features meet the embedding's units
    def __init__(s): super().__init__(); s.e = nn.Embedding(5, 2); s.o = nn.Linear(2, 1, bias=False)
    def forward(s, x, ids): return s.o((x + s.e(ids)).mean(1, keepdim=True))
class FlatSlices(nn.Module):  # two slices of one flattened channel's positions
    def __init__(s): super().__init__(); s.c = nn.Conv2d(2, 2, 3, stride=2, padding=1, bias=False); s.a = nn.Linear(3, 2); s.b = nn.Linear(3, 2)
    def forward(s, x): h = s.c(x).flatten(1); return s.a(h[:, 0:3]) + s.b(h[:, 3:6])
class FlatRotate(nn.Module):  # split and re-cat of flattened features in another order
    def __init__(s): super().__init__(); s.c = nn.Conv2d(2, 2, 3, stride=2, padding=1, bias=False); s.l = nn.Linear(42, 1, bias=False)
    def forward(s, x):
        a, b = torch.cat([s.c(x).flatten(1), x.flatten(1)], 1).split([3, 39], 1)
        return s.l(torch.cat([b, a], 1))
class FlatRoll(nn.Module):  # the positions of one flattened channel, rolled
    def __init__(s): super().__init__(); s.c = nn.Conv2d(2, 2, 3, stride=2, padding=1, bias=False); s.a = nn.Linear(6, 2); s.b = nn.Linear(6, 2)
    def forward(s, x): h = s.c(x).flatten(1); return s.a(h[:, 0:6]) + s.b(torch.cat([h[:, 1:6], h[:, 0:1]], 1))
# H: GPT-J rotary (a constant sin/cos table split in two, interleaved pairs, partial rotary)
def sinusoidal(num_pos, dim):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.int64) / dim))
    inp = torch.einsum("i , j -> i j", torch.arange(num_pos, dtype=torch.int64).float(), inv_freq).float()
    return torch.cat((torch.sin(inp), torch.cos(inp)), dim=1)

def rotate_every_two(x):
    x1 = x[:, :, :, ::2]; x2 = x[:, :, :, 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)

def apply_rotary(t, sin, cos):
    sin = torch.repeat_interleave(sin[:, :, None, :], 2, 3)
    cos = torch.repeat_interleave(cos[:, :, None, :], 2, 3)
    return (t * cos) + (rotate_every_two(t) * sin)

class GPTJAttn(nn.Module):
    def __init__(s, d=8, heads=2, rotary_dim=None):
        super().__init__()
        s.h, s.hd = heads, d // heads
        s.rot = rotary_dim or s.hd
        s.q = nn.Linear(d, d, bias=False); s.k = nn.Linear(d, d, bias=False); s.v = nn.Linear(d, d, bias=False); s.o = nn.Linear(d, d)
        s.register_buffer("embed_positions", sinusoidal(16, s.rot), persistent=False)
    def forward(s, x):
        B, T, D = x.shape
        q = s.q(x).view(B, T, s.h, s.hd); k = s.k(x).view(B, T, s.h, s.hd); v = s.v(x).view(B, T, s.h, s.hd).permute(0, 2, 1, 3)
        pos = torch.arange(T).unsqueeze(0)
        sincos = s.embed_positions[pos]
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        if s.rot < s.hd:
            q = torch.cat([apply_rotary(q[..., :s.rot], sin, cos), q[..., s.rot:]], -1)
            k = torch.cat([apply_rotary(k[..., :s.rot], sin, cos), k[..., s.rot:]], -1)
        else:
            q = apply_rotary(q, sin, cos); k = apply_rotary(k, sin, cos)
        q, k = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3)
        a = torch.softmax(q @ k.transpose(-1, -2) / s.hd ** 0.5, -1) @ v
        return s.o(a.transpose(1, 2).reshape(B, T, D))


# family letter (issue 19) _ pattern
cases = {"A_token_select": (TokSel(), (torch.randn(2, 3, 4),)), "A_slices": (Slices(), (torch.randn(2, 3, 4),)),
         "A_flip": (Flip(), (torch.randn(2, 3, 4),)), "A_roll": (Roll(), (torch.randn(2, 3, 4),)),
         "A_corner": (Corner(), (torch.randn(1, 2, 5, 5),)), "A_spatial_T": (SpatialT(), (torch.randn(1, 2, 5, 5),)),
         "B_cat_views": (CatViews(), (torch.randn(2, 4, 4),)), "B_fourier": (Fourier(), (torch.randn(3, 2),)),
         "C_softmax_axis": (SoftmaxAxis(), (torch.randn(2, 3, 4),)), "C_ln_axis": (LNAxis(), (torch.randn(2, 3, 4),)),
         "C_mean_hw": (MeanHW(), (torch.randn(1, 2, 5, 6),)), "C_mean_hw2": (MeanHW2(), (torch.randn(1, 2, 5, 6),)),
         "D_leaky": (Leaky(), (torch.randn(2, 4),)), "D_dilation": (Dil(), (torch.randn(1, 2, 6, 6),)),
         "D_pools": (Pools(), (torch.randn(1, 2, 6, 6),)), "D_ln_eps": (LNEps(), (torch.randn(2, 3, 4),)),
         "D_causal": (Causal(), (torch.randn(2, 4, D),)), "E_causal_anticausal_mask": (MaskedPair(), (torch.randn(2, 4, D),)),
         "E_const_tokens": (ConstTok(), (torch.randn(2, 3, 4),)), "E_scalar_add": (ScalarAdd(), (torch.randn(2, 4),)),
         "E_chan_const": (ChanConst(), (torch.randn(2, 4),)),
         "F_reduce": (Reduce(), (torch.randn(2, 4),)),
         "G_two_embeddings": (Emb2(), (torch.randint(0, 5, (2, 3)), torch.randint(0, 5, (2, 3)))),
         "G_two_embeddings_b": (Emb2b(), (torch.randint(0, 5, (2, 3)), torch.randint(0, 5, (2, 3)))),
         "G_two_id_inputs": (Emb2c(), (torch.randint(0, 5, (2, 3)), torch.randint(0, 5, (2, 3)))),
         }

cases.update({"I_res_gn": (ResGN(), (torch.randn(1, 2, 4, 4),)), "I_cat_gn": (CatGN(), (torch.randn(1, 2, 4, 4),)),
              "I_partial_conv": (Partial(), (torch.randn(1, 2, 4, 4),)),
              "I_inception_split": (Inception(), (torch.randn(1, 2, 4, 4),)),
              "I_se_over_grouped_conv": (SEGrouped(), (torch.randn(1, 2, 4, 4),)),
              "I_res_grouped_conv": (ResGroupedConv(), (torch.randn(1, 2, 4, 4),))})

cases.update({"K_where_pair": (WherePair(), (torch.randn(2, 2, 4, 4),)),
              "K_masked_fill_side": (MaskedFillSide(), (torch.randn(2, 2, 4, 4),)),
              "K_const_bias": (ConstBias(), (torch.randn(2, 4),)),
              "K_tied_then_const": (TiedThenConst(), (torch.randn(2, 2),)),
              "K_grouped_tied": (GroupedTied(), (torch.randn(2, 3, 2),)),
              "K_token_table_cat": (TokenTableCat(), (torch.randn(2, 3, 2),)),
              "K_one_element_consts": (OneElementConsts(), (torch.randn(2, 1, 3, 3),)),
              "K_gate_by_stats": (GateByStats(), (torch.randn(2, 1),)),
              "K_flat_residual": (FlatResidual(), (torch.randn(2, 1, 5),)),
              "K_group_norm_2d": (GroupNorm2d(), (torch.randn(3, 4),)),
              "K_cross_attention_pinned_query": (CrossAttnPinnedQuery(), (torch.randn(2, 3, 1),)),
              "K_heads_then_pinned": (HeadsThenPinned(), (torch.randn(2, 3, 2),)),
              "K_input_plus_embedding_mean": (InputPlusEmbeddingMean(), (torch.randn(2, 3, 2), torch.randint(0, 5, (2, 3)))),
              "K_flat_slices": (FlatSlices(), (torch.randn(2, 2, 3, 5),)),
              "K_flat_rotate": (FlatRotate(), (torch.randn(2, 2, 3, 5),)),
              "K_flat_roll": (FlatRoll(), (torch.randn(2, 2, 3, 5),))})

cases.update({"H_gptj_rotary": (GPTJAttn(), (torch.randn(2, 5, 8),)),
              "H_gptj_partial_rotary": (GPTJAttn(rotary_dim=2), (torch.randn(2, 5, 8),))})

OPEN: dict[str, str] = {}  # family -> why it still fails (issue 19)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=OPEN[n]))
                                  if n in OPEN else n for n in sorted(cases)])
def test_family(name):
    model, inputs = cases[name]
    torch.manual_seed(0)
    check_all(model, inputs)


# ONNX spellings of the same models (TorchScript exporter): sound through onnxruntime, and
# isomorphic to the torch graph unless the exporter changes the program
ONNX_OPEN: dict[str, str] = {}  # name -> why its ONNX spelling still fails
PARITY_DIFFERS = {
    "G_two_embeddings_b": "an integer input used in arithmetic is a Cast the ONNX frontend treats as a constant",
    "K_cross_attention_pinned_query": "the exporter cuts in_proj_weight into new initializers (q, and k/v)",
}


def test_embedding_units_meeting_free_input_features_are_not_interchangeable():
    """``x + emb(ids)`` where ``x``'s features are a free axis: swapping two embedding units
    (and the head's matching inputs) changes the function, since ``x``'s features stay where
    they are, so the two graphs must differ (before the fix they were isomorphic)."""
    import gmn_compiler as gc
    from gmn_compiler import canonical

    torch.manual_seed(0)
    model, inputs = InputPlusEmbeddingMean(), (torch.randn(2, 3, 2), torch.randint(0, 5, (2, 3)))
    swapped = InputPlusEmbeddingMean()
    with torch.no_grad():
        swapped.e.weight.copy_(model.e.weight[:, [1, 0]])
        swapped.o.weight.copy_(model.o.weight[:, [1, 0]])
        assert not torch.allclose(model(*inputs), swapped(*inputs))
    assert not canonical.isomorphic(gc.compile(model, inputs), gc.compile(swapped, inputs))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=ONNX_OPEN[n]))
                                  if n in ONNX_OPEN else n for n in sorted(cases)])
def test_family_onnx(name, tmp_path):
    import gmn_compiler as gc
    from gmn_compiler import canonical
    from gmn_compiler.testing import randomized

    model, inputs = cases[name]
    model = randomized(model)
    path = str(tmp_path / "model.onnx")
    torch.onnx.export(model, inputs, path, dynamo=False, opset_version=17)
    pg = gc.compile(path)
    gc.check_symmetry(path)
    same = canonical.isomorphic(pg, gc.compile(model, inputs))
    assert same == (name not in PARITY_DIFFERS), PARITY_DIFFERS.get(name, "torch and ONNX graphs differ")
