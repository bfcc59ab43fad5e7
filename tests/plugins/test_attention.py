"""plugins/attention.py: attention in all its spellings.

Every spelling sits between an input ``Linear`` and an output ``Linear`` (so that its
projections read and write hidden units) and is checked with

- the oracles (round trip, soundness of random automorphisms, declared symmetries);
- the symmetries of attention written by hand in the weights, each of which must keep the
  function and give an isomorphic graph: (a) permuting heads (for grouped-query attention:
  query heads together with their K/V head, or query heads inside one group), (b) permuting
  the q/k dims of one head jointly, (c) permuting the v dims of one head (v rows and
  out-projection columns);
- changes that are *not* symmetries, each of which must change the function and give a
  non-isomorphic graph: (d) moving one q/k dim from head 0 to head 1, (e) permuting the q
  dims of a head without its k dims, (f) swapping the q and k projections (the attention
  matrix gets transposed), (g) grouped-query: swapping two query heads of different K/V
  groups without moving the K/V heads, (h) moving one v dim from head 0 to head 1;
- the structure: one ``head`` node per query head, ``heads * head_dim`` ``contract`` edges,
  and ``head_member`` edges from every head to its q, k and output (v) nodes.

Weights are addressed through accessors on each attention module: ``q()``, ``k()``, ``v()``
return tensors (views into the parameters) whose axis 0 is the projection's output unit
(weight rows, bias); ``o()`` returns tensors whose axis 0 is the out-projection's input unit.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from oracles import (assert_isomorphic, assert_not_isomorphic, assert_not_symmetry, assert_oracles,
                     assert_round_trip, assert_same_function, assert_symmetry, functions_differ,
                     permuted_copy, randomize_buffers)

S = gc.schema
ROLE = S.node_column("role")
ETYPE = S.edge_column("type")
HEAD = S.code(S.NODE_ROLES, "head")
CONTRACT = S.code(S.EDGE_TYPES, "contract")
MEMBER = S.code(S.EDGE_TYPES, "head_member")

D_IN, D, D_OUT = 6, 8, 3
B, N = 2, 5


# ---------------------------------------------------------------- the spellings
class Wrapped(nn.Module):
    """``out(core(inp(x)))``: the attention reads and writes hidden units."""

    def __init__(self, core: nn.Module, d_in: int = D_IN):
        super().__init__()
        self.inp, self.core, self.out = nn.Linear(d_in, D), core, nn.Linear(D, D_OUT)

    def forward(self, x):
        return self.out(self.core(self.inp(x)))


class MHA(nn.Module):
    """``nn.MultiheadAttention`` used for self-attention."""

    def __init__(self, bias=True, batch_first=True, need_weights=False):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, 2, bias=bias, batch_first=batch_first)
        self.need_weights = need_weights
        self.heads = self.kv_heads = 2
        self.dh = 4
        _randomize(self)

    def forward(self, h):
        if self.need_weights:
            return self.attn(h, h, h)[0]
        return self.attn(h, h, h, need_weights=False)[0]

    def _bias(self, i):
        b = self.attn.in_proj_bias
        return [] if b is None else [b[i * D:(i + 1) * D]]

    def q(self):
        return [self.attn.in_proj_weight[:D]] + self._bias(0)

    def k(self):
        return [self.attn.in_proj_weight[D:2 * D]] + self._bias(1)

    def v(self):
        return [self.attn.in_proj_weight[2 * D:]] + self._bias(2)

    def o(self):
        return [self.attn.out_proj.weight.t()]


class CrossMHA(nn.Module):
    """Cross-attention: queries from ``x``, keys and values from ``y``, each through its own
    input layer. ``kdim`` other than ``D`` gives separate q/k/v projection weights."""

    def __init__(self, kdim=D):
        super().__init__()
        self.inp_q, self.inp_kv = nn.Linear(D_IN, D), nn.Linear(7, kdim)
        kwargs = {} if kdim == D else {"kdim": kdim, "vdim": kdim}
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True, **kwargs)
        self.out = nn.Linear(D, D_OUT)
        self.heads = self.kv_heads = 2
        self.dh = 4
        _randomize(self)

    @property
    def core(self):  # the accessors live here
        return self

    def forward(self, x, y):
        hq, hkv = self.inp_q(x), self.inp_kv(y)
        return self.out(self.attn(hq, hkv, hkv, need_weights=False)[0])

    def _weight(self, i):
        if self.attn.in_proj_weight is not None:
            return self.attn.in_proj_weight[i * D:(i + 1) * D]
        return (self.attn.q_proj_weight, self.attn.k_proj_weight, self.attn.v_proj_weight)[i]

    def q(self):
        return [self._weight(0), self.attn.in_proj_bias[:D]]

    def k(self):
        return [self._weight(1), self.attn.in_proj_bias[D:2 * D]]

    def v(self):
        return [self._weight(2), self.attn.in_proj_bias[2 * D:]]

    def o(self):
        return [self.attn.out_proj.weight.t()]


class _Projections(nn.Module):
    """Separate ``q``/``k``/``v``/``o`` linear layers (``heads`` query heads, ``kv_heads``
    K/V heads of ``dh`` dims)."""

    def __init__(self, heads=2, kv_heads=2, dh=4):
        super().__init__()
        self.heads, self.kv_heads, self.dh = heads, kv_heads, dh
        self.wq, self.wk = nn.Linear(D, heads * dh), nn.Linear(D, kv_heads * dh)
        self.wv, self.wo = nn.Linear(D, kv_heads * dh), nn.Linear(heads * dh, D)

    def split(self, t, heads):
        b, n, _ = t.shape
        return t.view(b, n, heads, self.dh).transpose(1, 2)

    def merge(self, t):
        b, _, n, _ = t.shape
        return t.transpose(1, 2).reshape(b, n, self.heads * self.dh)

    def q(self):
        return [self.wq.weight, self.wq.bias]

    def k(self):
        return [self.wk.weight, self.wk.bias]

    def v(self):
        return [self.wv.weight, self.wv.bias]

    def o(self):
        return [self.wo.weight.t()]


class SDPA(_Projections):
    """``F.scaled_dot_product_attention`` on heads split by view + transpose."""

    def __init__(self, causal=False, mask=None, heads=2, kv_heads=2, dh=4):
        super().__init__(heads, kv_heads, dh)
        self.causal = causal
        if mask is not None:
            self.register_buffer("mask", mask)
        else:
            self.mask = None

    def forward(self, h):
        q, k, v = self.split(self.wq(h), self.heads), self.split(self.wk(h), self.kv_heads), \
            self.split(self.wv(h), self.kv_heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal,
                                             enable_gqa=self.kv_heads != self.heads)
        return self.wo(self.merge(out))


class ByHandGQA(_Projections):
    """Grouped-query / multi-query attention written out: K/V heads repeated to the query
    heads (``repeat_interleave``, HF's ``repeat_kv`` expand + reshape, ``cat`` of slices,
    or matmul broadcasting when there is one K/V head)."""

    def __init__(self, heads, kv_heads, dh, how, sdpa=False):
        super().__init__(heads, kv_heads, dh)
        self.how, self.sdpa = how, sdpa

    def repeat(self, t):
        g = self.heads // self.kv_heads
        if self.how == "repeat_interleave":
            return t.repeat_interleave(g, dim=1)
        if self.how == "expand":
            b, hkv, n, dh = t.shape
            return t[:, :, None, :, :].expand(b, hkv, g, n, dh).reshape(b, hkv * g, n, dh)
        if self.how == "cat":
            return torch.cat([t[:, c:c + 1] for c in range(self.kv_heads) for _ in range(g)], dim=1)
        assert self.how == "broadcast" and self.kv_heads == 1
        return t

    def forward(self, h):
        q = self.split(self.wq(h), self.heads)
        k = self.repeat(self.split(self.wk(h), self.kv_heads))
        v = self.repeat(self.split(self.wv(h), self.kv_heads))
        if self.sdpa:  # HF Llama's sdpa path: repeat_kv, then plain SDPA
            return self.wo(self.merge(F.scaled_dot_product_attention(q, k, v)))
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.dh ** -0.5, dim=-1)
        return self.wo(self.merge(attn @ v))


class Timm(nn.Module):
    """timm's ``Attention`` (non-fused path): one qkv linear, reshape + permute + unbind."""

    def __init__(self, prescale=False):
        super().__init__()
        self.num_heads, self.head_dim = 2, 4
        self.heads, self.kv_heads, self.dh = 2, 2, 4
        self.scale = self.head_dim ** -0.5
        self.prescale = prescale
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.prescale:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)

    def q(self):
        return [self.qkv.weight[:D], self.qkv.bias[:D]]

    def k(self):
        return [self.qkv.weight[D:2 * D], self.qkv.bias[D:2 * D]]

    def v(self):
        return [self.qkv.weight[2 * D:], self.qkv.bias[2 * D:]]

    def o(self):
        return [self.proj.weight.t()]


class Conv1D(nn.Module):
    """HF's GPT-2 ``Conv1D``: a linear layer with its weight stored ``[in, out]``."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class GPT2(nn.Module):
    """HF ``GPT2Attention`` (eager path): ``c_attn`` then ``split``, ``_split_heads``, causal
    mask through ``torch.where`` with a lower-triangular bool buffer, ``_merge_heads``,
    ``c_proj``."""

    def __init__(self):
        super().__init__()
        self.num_heads, self.head_dim, self.split_size = 2, 4, D
        self.heads, self.kv_heads, self.dh = 2, 2, 4
        self.register_buffer("bias", torch.tril(torch.ones((N, N), dtype=torch.bool)).view(1, 1, N, N),
                             persistent=False)
        self.c_attn, self.c_proj = Conv1D(3 * D, D), Conv1D(D, D)

    def _split_heads(self, tensor, num_heads, attn_head_size):
        new_shape = tensor.size()[:-1] + (num_heads, attn_head_size)
        return tensor.view(new_shape).permute(0, 2, 1, 3)

    def _merge_heads(self, tensor, num_heads, attn_head_size):
        tensor = tensor.permute(0, 2, 1, 3).contiguous()
        new_shape = tensor.size()[:-2] + (num_heads * attn_head_size,)
        return tensor.view(new_shape)

    def _attn(self, query, key, value):
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        attn_weights = attn_weights / torch.full([], value.size(-1) ** 0.5, dtype=attn_weights.dtype,
                                                 device=attn_weights.device)
        query_length, key_length = query.size(-2), key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length:key_length, :key_length]
        mask_value = torch.finfo(attn_weights.dtype).min
        mask_value = torch.full([], mask_value, dtype=attn_weights.dtype, device=attn_weights.device)
        attn_weights = torch.where(causal_mask, attn_weights.to(attn_weights.dtype), mask_value)
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        return torch.matmul(attn_weights, value)

    def forward(self, hidden_states):
        query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
        query = self._split_heads(query, self.num_heads, self.head_dim)
        key = self._split_heads(key, self.num_heads, self.head_dim)
        value = self._split_heads(value, self.num_heads, self.head_dim)
        attn_output = self._attn(query, key, value)
        attn_output = self._merge_heads(attn_output, self.num_heads, self.head_dim)
        return self.c_proj(attn_output)

    def q(self):
        return [self.c_attn.weight[:, :D].t(), self.c_attn.bias[:D]]

    def k(self):
        return [self.c_attn.weight[:, D:2 * D].t(), self.c_attn.bias[D:2 * D]]

    def v(self):
        return [self.c_attn.weight[:, 2 * D:].t(), self.c_attn.bias[2 * D:]]

    def o(self):
        return [self.c_proj.weight]  # [in, out]: axis 0 is already the input unit


class Bert(nn.Module):
    """HF ``BertSelfAttention`` + ``BertSelfOutput`` (eager path): separate query/key/value,
    ``transpose_for_scores``, ``/ sqrt(dh)``, additive extended attention mask (a buffer,
    masking the last token), ``permute`` + ``view``, dense + LayerNorm on the residual."""

    def __init__(self):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = 2, 4
        self.all_head_size = D
        self.heads, self.kv_heads, self.dh = 2, 2, 4
        self.query, self.key, self.value = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.dense, self.LayerNorm = nn.Linear(D, D), nn.LayerNorm(D, eps=1e-12)
        mask = torch.ones(1, N)
        mask[:, -1] = 0
        self.register_buffer("extended_mask", (1.0 - mask)[:, None, None, :] * -10000.0)
        randomize_buffers(self)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        return x.view(new_x_shape).permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask=None):
        if attention_mask is None:
            attention_mask = self.extended_mask
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        attention_scores = attention_scores + attention_mask
        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        context_layer = context_layer.view(context_layer.size()[:-2] + (self.all_head_size,))
        return self.LayerNorm(self.dense(context_layer) + hidden_states)

    def q(self):
        return [self.query.weight, self.query.bias]

    def k(self):
        return [self.key.weight, self.key.bias]

    def v(self):
        return [self.value.weight, self.value.bias]

    def o(self):
        return [self.dense.weight.t()]


def _randomize(module):
    """Non-zero biases everywhere (nn.MultiheadAttention initialises them to 0, which would
    hide a swapped bias edge)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "bias" in name.split(".")[-1]:
                p.copy_(torch.randn(p.shape) * 0.5)


def _float_mask():
    """An additive float mask, the same for every head: causal plus a random bias."""
    g = torch.Generator().manual_seed(1)
    mask = torch.randn(N, N, generator=g)
    return mask.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), -1e4)


# name -> (model factory, input shapes); every model has ``.core`` with the accessors
SPELLINGS = {
    "mha-packed-batch_first": (lambda: Wrapped(MHA()), [(B, N, D_IN)]),
    "mha-packed-seq_first": (lambda: Wrapped(MHA(batch_first=False)), [(N, B, D_IN)]),
    "mha-no-bias": (lambda: Wrapped(MHA(bias=False)), [(B, N, D_IN)]),
    "mha-need_weights-default-call": (lambda: Wrapped(MHA(need_weights=True)), [(B, N, D_IN)]),
    "mha-cross-packed": (lambda: CrossMHA(), [(B, N, D_IN), (B, 4, 7)]),
    "mha-cross-separate-kdim": (lambda: CrossMHA(kdim=5), [(B, N, D_IN), (B, 4, 7)]),
    "sdpa": (lambda: Wrapped(SDPA()), [(B, N, D_IN)]),
    "sdpa-causal": (lambda: Wrapped(SDPA(causal=True)), [(B, N, D_IN)]),
    "sdpa-float-mask": (lambda: Wrapped(SDPA(mask=_float_mask())), [(B, N, D_IN)]),
    "timm": (lambda: Wrapped(Timm()), [(B, N, D_IN)]),
    "timm-prescaled-q": (lambda: Wrapped(Timm(prescale=True)), [(B, N, D_IN)]),
    "gpt2": (lambda: Wrapped(GPT2()), [(B, N, D_IN)]),
    "bert": (lambda: Wrapped(Bert()), [(B, N, D_IN)]),
    "mqa-sdpa-enable_gqa": (lambda: Wrapped(SDPA(heads=2, kv_heads=1, dh=4)), [(B, N, D_IN)]),
    "mqa-by-hand-broadcast": (lambda: Wrapped(ByHandGQA(2, 1, 4, "broadcast")), [(B, N, D_IN)]),
    "mqa-by-hand-repeat_interleave": (lambda: Wrapped(ByHandGQA(2, 1, 4, "repeat_interleave")), [(B, N, D_IN)]),
    "gqa-sdpa-enable_gqa": (lambda: Wrapped(SDPA(heads=4, kv_heads=2, dh=2)), [(B, N, D_IN)]),
    "gqa-by-hand-repeat_interleave": (lambda: Wrapped(ByHandGQA(4, 2, 2, "repeat_interleave")), [(B, N, D_IN)]),
    "gqa-by-hand-expand-reshape": (lambda: Wrapped(ByHandGQA(4, 2, 2, "expand")), [(B, N, D_IN)]),
    "gqa-by-hand-cat-of-slices": (lambda: Wrapped(ByHandGQA(4, 2, 2, "cat")), [(B, N, D_IN)]),
    "gqa-repeat_kv-then-sdpa": (lambda: Wrapped(ByHandGQA(4, 2, 2, "expand", sdpa=True)), [(B, N, D_IN)]),
}
ALL = sorted(SPELLINGS)
SQUARE = [s for s in ALL if not s.startswith(("mqa", "gqa")) and s != "mha-cross-separate-kdim"]  # q, k alike
GROUPED = [s for s in ALL if s.startswith("gqa")]


def _make(spelling):
    torch.manual_seed(0)
    make, shapes = SPELLINGS[spelling]
    model = make().eval()
    inputs = tuple(torch.randn(*s) for s in shapes)
    return model, inputs


_GRAPHS: dict = {}


def _compiled(spelling):
    """(model, inputs, graph) once per spelling; the graph passed the round trip (the
    other oracles are test_oracles' business, so that each test reports its own failure)."""
    if spelling not in _GRAPHS:
        model, inputs = _make(spelling)
        _GRAPHS[spelling] = (model, inputs, assert_round_trip(model, inputs))
    return _GRAPHS[spelling]


# ---------------------------------------------------------------- weight permutations
def _apply(tensors, p):
    for t in tensors:
        t.copy_(t[p])


def _blocks(head_perm, dh):
    """Unit permutation moving whole heads of ``dh`` units."""
    head_perm = torch.as_tensor(head_perm)
    return (head_perm[:, None] * dh + torch.arange(dh)).reshape(-1)


def _inside(n_heads, dh, heads, p):
    """Unit permutation applying ``p`` inside each head of ``heads``."""
    perm = torch.arange(n_heads * dh)
    for h in heads:
        perm[h * dh:(h + 1) * dh] = h * dh + torch.as_tensor(p)
    return perm


def _swap(n, i, j):
    perm = torch.arange(n)
    perm[i], perm[j] = j, i
    return perm


def _group(c):
    return c.heads // c.kv_heads


def permute_heads(m):
    """(a) Reverse the K/V heads and, inside every group, reverse its query heads; each
    query head moves together with its K/V head."""
    c = m.core
    g = _group(c)
    kv_perm = torch.arange(c.kv_heads).flip(0)
    q_perm = torch.tensor([kv_perm[h // g] * g + (g - 1 - h % g) for h in range(c.heads)])
    _apply(c.q(), _blocks(q_perm, c.dh))
    _apply(c.o(), _blocks(q_perm, c.dh))
    _apply(c.k(), _blocks(kv_perm, c.dh))
    _apply(c.v(), _blocks(kv_perm, c.dh))


def permute_query_heads_in_group(m):
    """(a') Grouped-query: swap the two query heads of K/V group 0 (they read the same K/V)."""
    c = m.core
    _apply(c.q(), _blocks(_swap(c.heads, 0, 1), c.dh))
    _apply(c.o(), _blocks(_swap(c.heads, 0, 1), c.dh))


def _qk_dims(c):
    p = torch.arange(c.dh).flip(0)  # a non-identity permutation of one head's dims
    g = _group(c)
    kv_head = c.kv_heads - 1  # the last K/V head and every query head of its group
    return p, kv_head, range(kv_head * g, (kv_head + 1) * g)


def permute_qk_dims(m):
    """(b) The same permutation on the q and k dims of one head."""
    c = m.core
    p, kv_head, q_heads = _qk_dims(c)
    _apply(c.q(), _inside(c.heads, c.dh, q_heads, p))
    _apply(c.k(), _inside(c.kv_heads, c.dh, [kv_head], p))


def permute_v_dims(m):
    """(c) A permutation of the v dims of one head: v rows and out-projection columns."""
    c = m.core
    p, kv_head, q_heads = _qk_dims(c)
    _apply(c.v(), _inside(c.kv_heads, c.dh, [kv_head], p))
    _apply(c.o(), _inside(c.heads, c.dh, q_heads, p))


def move_qk_dim_across_heads(m):
    """(d) Swap q/k dim 0 of (query) head 0 with dim 0 of the first head of the next K/V
    group (or of head 1 when there is one K/V head)."""
    c = m.core
    g = _group(c)
    other = g if c.kv_heads > 1 else 1
    _apply(c.q(), _swap(c.heads * c.dh, 0, other * c.dh))
    if c.kv_heads > 1:
        _apply(c.k(), _swap(c.kv_heads * c.dh, 0, c.dh))


def permute_q_dims_only(m):
    """(e) Permute the q dims of one head, leaving k alone."""
    c = m.core
    p, _, q_heads = _qk_dims(c)
    _apply(c.q(), _inside(c.heads, c.dh, q_heads, p))


def swap_q_and_k(m):
    """(f) Swap the q and k projections: transposes the attention scores."""
    c = m.core
    for tq, tk in zip(c.q(), c.k()):
        saved = tq.clone()
        tq.copy_(tk)
        tk.copy_(saved)


def swap_query_heads_across_groups(m):
    """(g) Grouped-query: swap query heads 0 and ``group`` (different K/V heads) with their
    out-projection columns, without moving K/V."""
    c = m.core
    perm = _blocks(_swap(c.heads, 0, _group(c)), c.dh)
    _apply(c.q(), perm)
    _apply(c.o(), perm)


def move_v_dim_across_heads(m):
    """(h) Swap v dim 0 of the first and last K/V head (v rows and out-projection columns
    of the query heads reading them)."""
    c = m.core
    g = _group(c)
    if c.kv_heads > 1:
        _apply(c.v(), _swap(c.kv_heads * c.dh, 0, (c.kv_heads - 1) * c.dh))
        perm = torch.arange(c.heads * c.dh)
        for h in range(g):
            a, b_ = h * c.dh, ((c.kv_heads - 1) * g + h) * c.dh
            perm[a], perm[b_] = b_, a
        _apply(c.o(), perm)
    else:  # one K/V head: move an out-projection column between query heads
        _apply(c.o(), _swap(c.heads * c.dh, 0, c.dh))


# ---------------------------------------------------------------- the tests
@pytest.mark.parametrize("spelling", ALL)
def test_oracles(spelling):
    model, inputs = _make(spelling)
    assert_oracles(model, inputs, trials=3)


SYMMETRIES = {"heads": permute_heads, "qk-dims-jointly": permute_qk_dims, "v-dims": permute_v_dims}


@pytest.mark.parametrize("symmetry", sorted(SYMMETRIES))
@pytest.mark.parametrize("spelling", ALL)
def test_symmetry_gives_isomorphic_graph(spelling, symmetry):
    model, inputs, pg = _compiled(spelling)
    permuted = permuted_copy(model, SYMMETRIES[symmetry])
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                      permuted.state_dict().values())), "no-op"
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


@pytest.mark.parametrize("spelling", GROUPED)
def test_grouped_query_heads_inside_group_is_symmetry(spelling):
    model, inputs, pg = _compiled(spelling)
    permuted = permuted_copy(model, permute_query_heads_in_group)
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


NON_SYMMETRIES = {"qk-dim-across-heads": (move_qk_dim_across_heads, ALL),
                  "q-dims-without-k": (permute_q_dims_only, ALL),
                  "swap-q-and-k": (swap_q_and_k, SQUARE),
                  "query-heads-across-groups": (swap_query_heads_across_groups, GROUPED),
                  "v-dim-across-heads": (move_v_dim_across_heads, ALL)}


@pytest.mark.parametrize("change, spelling", [(c, s) for c in sorted(NON_SYMMETRIES)
                                              for s in NON_SYMMETRIES[c][1]])
def test_non_symmetry_gives_non_isomorphic_graph(spelling, change):
    model, inputs, pg = _compiled(spelling)
    changed = permuted_copy(model, NON_SYMMETRIES[change][0])
    assert functions_differ(model, changed, inputs), "the change should alter the function"
    assert_not_isomorphic(pg, gc.compile(changed, inputs))


@pytest.mark.parametrize("spelling", ALL)
def test_one_head_node_per_query_head_and_contract_edges(spelling):
    model, inputs, pg = _compiled(spelling)
    c = model.core
    roles, types = pg.data.x[:, ROLE].long(), pg.data.edge_attr[:, ETYPE].long()
    assert int((roles == HEAD).sum()) == c.heads
    assert int((types == CONTRACT).sum()) == c.heads * c.dh
    assert bool((types == MEMBER).any())


@pytest.mark.parametrize("spelling", ALL)
def test_membership_edges_leave_the_head_nodes(spelling):
    """DESIGN §3 steps 4-6: scaling and softmax act on free axes only, so the head nodes
    the scores live on are the ones ``attn @ v`` attaches the output (v) dims to: every
    head has ``head_member`` edges to its q dims, its k dims and its v dims, and only
    head nodes have them."""
    model, inputs, pg = _compiled(spelling)
    c = model.core
    d = pg.data
    roles, types = d.x[:, ROLE].long(), d.edge_attr[:, ETYPE].long()
    heads = torch.nonzero(roles == HEAD).flatten()
    src = d.edge_index[0, types == MEMBER]
    assert set(src.tolist()) == set(heads.tolist()), "membership edges leave head nodes only"
    assert torch.bincount(src)[heads].tolist() == [3 * c.dh] * c.heads


# ---------------------------------------------------------------- masks that differ per head
def _per_head_bias():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, N, N, generator=g) * 3


@pytest.mark.parametrize("spelling", ["sdpa-attn_mask", "bert-additive"])
def test_mask_that_differs_per_head_pins_the_heads(spelling):
    """An additive bias that differs per head (ALiBi-like, a buffer) breaks the head
    permutation: no automorphism may swap the heads (soundness), and the hand-permuted
    weights change the function and give a non-isomorphic graph. Permuting q/k dims inside
    a head stays a symmetry."""
    torch.manual_seed(0)
    if spelling == "sdpa-attn_mask":
        model = Wrapped(SDPA(mask=_per_head_bias())).eval()
    else:
        model = Wrapped(Bert()).eval()
        model.core.extended_mask = _per_head_bias()[None]  # [1, heads, N, N]
    inputs = (torch.randn(B, N, D_IN),)
    pg = assert_oracles(model, inputs, trials=4)
    for seed in range(1, 5):  # a declared permutation of 2 heads is the identity half the time
        gc.check_symmetry(model, inputs, trials=1, seed=seed, graph=pg)
    assert_not_symmetry(model, pg, inputs, permute_heads)
    assert_symmetry(model, pg, inputs, permute_qk_dims)


class BertMaskInput(nn.Module):
    """BERT with the extended attention mask passed as a model input, as HF does."""

    def __init__(self):
        super().__init__()
        self.inp, self.core, self.out = nn.Linear(D_IN, D), Bert(), nn.Linear(D, D_OUT)

    def forward(self, x, attention_mask):
        return self.out(self.core(self.inp(x), attention_mask))


@pytest.mark.parametrize("options", [{}, {"input_neuron_axes": {"attention_mask": None}}],
                         ids=["inferred-axes", "mask-without-neurons"])
def test_bert_with_attention_mask_as_model_input(options):
    torch.manual_seed(0)
    model = BertMaskInput().eval()
    mask = torch.zeros(B, 1, 1, N)
    mask[0, ..., -1] = -10000.0
    inputs = (torch.randn(B, N, D_IN), mask)
    pg = assert_round_trip(model, inputs, **options)
    gc.check_symmetry(model, inputs, trials=3, graph=pg)
    for symmetry in (permute_heads, permute_qk_dims, permute_v_dims):
        permuted = permuted_copy(model, symmetry)
        assert_same_function(model, permuted, inputs)
        assert_isomorphic(pg, gc.compile(permuted, inputs, **options))
    for change in (move_qk_dim_across_heads, permute_q_dims_only, swap_q_and_k):
        changed = permuted_copy(model, change)
        assert functions_differ(model, changed, inputs)
        assert_not_isomorphic(pg, gc.compile(changed, inputs, **options))


class ComputedMask(SDPA):
    """An ``attn_mask`` computed in ``forward`` from constants, shaped per head: T5's
    cross-attention passes ``zeros(1, heads, q, k)``; ``differs`` makes head 1's mask causal."""

    def __init__(self, differs: bool):
        super().__init__()
        self.differs = differs

    def forward(self, h):
        q, k, v = self.split(self.wq(h), self.heads), self.split(self.wk(h), self.kv_heads), \
            self.split(self.wv(h), self.kv_heads)
        mask = torch.zeros(1, self.heads, q.shape[-2], k.shape[-2])
        if self.differs:
            mask[:, 1] = torch.full((q.shape[-2], k.shape[-2]), -1e4).triu(1)
        return self.wo(self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


def test_a_computed_mask_shaped_per_head_but_equal_for_all_heads_keeps_the_heads():
    torch.manual_seed(0)
    model = Wrapped(ComputedMask(differs=False)).eval()
    inputs = (torch.randn(B, N, D_IN),)
    pg = assert_oracles(model, inputs, trials=4)
    assert_symmetry(model, pg, inputs, permute_heads)


def test_a_computed_mask_that_differs_per_head_is_refused():
    model = Wrapped(ComputedMask(differs=True)).eval()
    with pytest.raises(gc.CompileError, match="differs per head is not supported"):
        gc.compile(model, (torch.randn(B, N, D_IN),))


class ConstantOnKeys(nn.Module):
    """A constant vector added to the key units only (what a bias assembled from a query bias, a
    constant for the keys and a value bias computes once the constant is not zero): each head's
    key dims are told apart from the other head's, so heads may not swap."""

    def __init__(self, heads: int = 2, dim: int = 3):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.qkv, self.out = nn.Linear(D_IN, 3 * heads * dim), nn.Linear(heads * dim, D_OUT)
        self.register_buffer("shift", torch.randn(heads * dim), persistent=False)

    def forward(self, x):
        b, t, _ = x.shape
        h = self.qkv(x)
        w = self.heads * self.dim
        qkv = torch.cat([h[..., :w], h[..., w:2 * w] + self.shift, h[..., 2 * w:]], -1)
        q, k, v = qkv.view(b, t, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out(out.transpose(1, 2).reshape(b, t, w))


def test_key_dims_fixed_differently_per_head_keep_the_heads_apart():
    """The heads used to be declared swappable here and the completeness oracle proved the
    swap was no automorphism (the keys' constant differs between heads)."""
    torch.manual_seed(0)
    model, inputs = ConstantOnKeys().eval(), (torch.randn(B, N, D_IN),)
    report = gc.check_symmetry(model, inputs, trials=3)
    assert not any(what.startswith("attention heads") for what in report.symmetries_checked)
    assert any(what.startswith("value dims") for what in report.symmetries_checked)


class CosineAttention(nn.Module):
    """Swin-V2's attention: the qkv bias is ``cat(q_bias, k_bias, v_bias)`` with ``k_bias`` a
    constant buffer, and q, k are l2-normalised before their product (so a per-dim constant on
    the keys changes the output)."""

    def __init__(self, k_bias: torch.Tensor, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))
        self.register_buffer("k_bias", k_bias, persistent=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def test_a_constant_on_the_keys_keeps_heads_apart_after_normalising():
    """The constant is added before the keys are normalised: the normalised keys carry no
    fixed position of their own, yet what anchors them (the constant's index along all key
    units) differs between heads, so the heads are not declared swappable (they used to be,
    and the completeness oracle proved the swap was no automorphism). A zero constant, as
    Swin-V2 ships it, leaves heads and q/k dims free."""
    torch.manual_seed(0)
    inputs = (torch.randn(1, 5, 8),)
    varying = gc.check_symmetry(CosineAttention(torch.randn(8)).eval(), inputs, trials=3)
    assert not any(what.startswith(("attention heads", "query/key dims")) for what in varying.symmetries_checked)
    assert any(what.startswith("value dims") for what in varying.symmetries_checked)
    zero = gc.check_symmetry(CosineAttention(torch.zeros(8)).eval(), inputs, trials=3)
    assert any(what.startswith("attention heads") for what in zero.symmetries_checked)
    assert any(what.startswith("query/key dims") for what in zero.symmetries_checked)


def _rotate_half(x):
    x1, x2 = x.chunk(2, -1)
    return torch.cat([-x2, x1], -1)


class RotaryWithKeyConstant(nn.Module):
    """EVA-02's attention: qkv bias ``cat(q_bias, k_bias, v_bias)`` with ``k_bias`` a constant
    buffer; rotary embedding on the patch tokens only (``class_token``: token 0 kept as it is,
    concatenated back), or on every token with the keys then normalised."""

    def __init__(self, k_bias: torch.Tensor, class_token: bool, dim: int = 8, heads: int = 2, tokens: int = 5):
        super().__init__()
        self.heads, self.class_token = heads, class_token
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))
        self.register_buffer("k_bias", k_bias, persistent=False)
        angles = torch.arange(tokens - class_token).float()[:, None] * torch.arange(1, dim // heads // 2 + 1).float()
        self.register_buffer("cos", torch.cat([angles.cos()] * 2, -1))
        self.register_buffer("sin", torch.cat([angles.sin()] * 2, -1))

    def rope(self, t):
        if not self.class_token:
            return t * self.cos + _rotate_half(t) * self.sin
        rest = t[:, :, 1:]
        return torch.cat([t[:, :, :1], rest * self.cos + _rotate_half(rest) * self.sin], 2)

    def forward(self, x):
        b, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.rope(q), self.rope(k)
        if not self.class_token:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("class_token", [True, False], ids=["class-token", "normalised"])
def test_what_anchors_the_keys_is_followed_through_rotary_and_copies(class_token):
    """The key constant tells each head's k dims apart; the rotary table then anchors the same
    nodes again (its key keeps the earlier one), and the class token's keys are copies of the
    biased units (the copy's anchor is found up its chain of copies). Heads stay apart, and
    the oracles pass; with a zero constant they are declared swappable."""
    torch.manual_seed(0)
    inputs = (torch.randn(1, 5, 8),)
    varying = gc.check_symmetry(RotaryWithKeyConstant(torch.randn(8), class_token).eval(), inputs, trials=3)
    assert not any(what.startswith("attention heads") for what in varying.symmetries_checked)
    zero = gc.check_symmetry(RotaryWithKeyConstant(torch.zeros(8), class_token).eval(), inputs, trials=3)
    assert any(what.startswith("attention heads") for what in zero.symmetries_checked)
