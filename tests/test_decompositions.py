"""Ops without a rule of their own compile through PyTorch's decomposition of them: the torch
frontend traces ``torch.einsum`` into the permutes, views and batched matmuls PyTorch runs for
it, ``glu`` into slices, sigmoid and mul, ``channel_shuffle`` into views. Each gives the graph
of the same computation written out by hand (isomorphic, values included), and every oracle
holds. An op whose decomposition needs ops without rules is reported as itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from oracles import assert_isomorphic, assert_oracles

H, D, T = 2, 4, 5


class TwoLayers(nn.Module):
    """x -> W1 (as einsum or linear) -> relu -> W2 -> y, weights on either side."""

    def __init__(self, spelling: str):
        super().__init__()
        self.spelling = spelling
        self.w1, self.b1 = nn.Parameter(torch.randn(6, 3)), nn.Parameter(torch.randn(6))
        self.w2 = nn.Parameter(torch.randn(2, 6))

    def forward(self, x):
        if self.spelling == "einsum":
            h = torch.relu(torch.einsum("bi,oi->bo", x, self.w1) + self.b1)
            return torch.einsum("oh,bh->bo", self.w2, h)
        return F.linear(torch.relu(F.linear(x, self.w1, self.b1)), self.w2)


class Attention(nn.Module):
    """Multi-head self-attention with scores and mixing as einsum or matmul; ``talking``
    adds a learned mixing of the heads' attention maps (talking-heads attention)."""

    def __init__(self, spelling: str, talking: bool = False):
        super().__init__()
        self.spelling, self.talking = spelling, talking
        self.qkv, self.o = nn.Linear(H * D, 3 * H * D), nn.Linear(H * D, H * D)
        if talking:
            self.mix = nn.Parameter(torch.randn(H, H))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        if self.spelling == "einsum":
            a = (torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(D)).softmax(-1)
            if self.talking:
                a = torch.einsum("bhij,hg->bgij", a, self.mix)
            y = torch.einsum("bhqk,bhkd->bhqd", a, v)
        else:
            a = (q @ k.transpose(-2, -1) / math.sqrt(D)).softmax(-1)
            y = a @ v
        return self.o(y.transpose(1, 2).reshape(b, t, c))


class LinearThen(nn.Module):
    """Linear(3 -> ``width``) followed by ``fn``."""

    def __init__(self, width: int, fn):
        super().__init__()
        self.l, self.fn = nn.Linear(3, width), fn

    def forward(self, x):
        return self.fn(self.l(x))


def test_einsum_linear_layers_give_the_linear_graph():
    torch.manual_seed(0)
    einsum, linear = TwoLayers("einsum").eval(), TwoLayers("linear").eval()
    linear.load_state_dict(einsum.state_dict())
    inputs = (torch.randn(4, 3),)
    pg = assert_oracles(einsum, inputs)
    assert_isomorphic(pg, gc.compile(linear, inputs))
    assert sum("hidden units" in s["what"] for s in pg.symmetries) == 2


def test_einsum_attention_gives_the_matmul_attention_graph(monkeypatch):
    """The einsum trace (batched matmuls between views) is the written-out computation. The
    matmul spelling would be recognised as one attention op (``fuse_attention``), which the
    einsum views hide from the pattern, so that recognition is switched off here."""
    from gmn_compiler import ir_patterns

    monkeypatch.setattr(ir_patterns, "fuse_attention", lambda ir: ir)
    torch.manual_seed(0)
    einsum, matmul = Attention("einsum").eval(), Attention("matmul").eval()
    matmul.load_state_dict(einsum.state_dict())
    inputs = (torch.randn(1, T, H * D),)
    pg = assert_oracles(einsum, inputs)
    assert_isomorphic(pg, gc.compile(matmul, inputs))
    declared = " ".join(s["what"] for s in pg.symmetries)
    for claim in ("attention heads", "query/key dims within each head", "value dims within each head"):
        assert claim in declared


def test_talking_heads_mixing_is_a_linear_layer_over_heads():
    torch.manual_seed(0)
    model, inputs = Attention("einsum", talking=True).eval(), (torch.randn(1, T, H * D),)
    pg = assert_oracles(model, inputs, trials=6)
    assert "mix" in [p.name for p in pg.params]


def test_einsum_the_frontend_cannot_express_is_reported_with_its_location():
    trace = LinearThen(9, lambda h: torch.einsum("bii->b", h.view(-1, 3, 3)))
    with pytest.raises(gc.UnsupportedOpsError, match=r"test_decompositions\.py"):
        gc.compile(trace, (torch.randn(2, 3),))


class GatedAndShuffled(nn.Module):
    """conv -> GLU over channels -> channel shuffle -> pool -> linear, with the library ops
    (``library``) or written out by hand."""

    def __init__(self, library: bool):
        super().__init__()
        self.library = library
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        if self.library:
            h = nn.ChannelShuffle(2)(F.glu(h, dim=1))
        else:
            a, b = h[:, :4], h[:, 4:]
            h = a * torch.sigmoid(b)
            n, c, height, width = h.shape
            h = h.view(n, 2, c // 2, height, width).transpose(1, 2).reshape(n, c, height, width)
        return self.fc(h.mean((2, 3)))


def test_glu_and_channel_shuffle_give_the_written_out_graph():
    torch.manual_seed(0)
    library, by_hand = GatedAndShuffled(True).eval(), GatedAndShuffled(False).eval()
    by_hand.load_state_dict(library.state_dict())
    inputs = (torch.randn(2, 3, 5, 5),)
    pg = assert_oracles(library, inputs)
    assert_isomorphic(pg, gc.compile(by_hand, inputs))


def test_an_op_whose_decomposition_has_no_rules_is_reported_as_itself():
    with pytest.raises(gc.UnsupportedOpsError, match=r"aten\.cumsum\.default") as caught:
        gc.compile(LinearThen(4, lambda h: h.cumsum(-1)), (torch.randn(2, 3),))
    assert "prims" not in str(caught.value)


# Spellings of one function compile to one graph: activations written out as arithmetic are
# recognised by evaluation (gmn_compiler.ir_elementwise), attention written out is one sdpa op.
def _new_gelu(x):  # Hugging Face's NewGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


WRITTEN_ACTIVATIONS = {
    "gelu_tanh": (lambda h: F.gelu(h, approximate="tanh"), _new_gelu),
    "gelu_erf": (F.gelu, lambda h: 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))),
    "silu": (F.silu, lambda h: h * torch.sigmoid(h)),
    "mish": (F.mish, lambda h: h * torch.tanh(F.softplus(h))),
}


class Mlp(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.act, self.a, self.b = act, nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


@pytest.mark.parametrize("name", sorted(WRITTEN_ACTIVATIONS))
def test_activation_written_out_gives_the_activation_graph(name):
    native, written = WRITTEN_ACTIVATIONS[name]
    x = (torch.randn(4, 3),)
    torch.manual_seed(0)
    a = Mlp(native)
    torch.manual_seed(0)
    b = Mlp(written)
    pg = assert_oracles(b, x)
    assert_isomorphic(gc.compile(a, x), pg)
    assert pg.data.num_nodes == gc.compile(a, x).data.num_nodes


def test_arithmetic_that_is_no_known_activation_stays_written_out():
    """``h * sigmoid(1.5 h)`` is close to SiLU but not SiLU: it must not be taken for it."""
    x = (torch.randn(4, 3),)
    torch.manual_seed(0)
    near = Mlp(lambda h: h * torch.sigmoid(1.5 * h))
    torch.manual_seed(0)
    silu = Mlp(F.silu)
    pg = assert_oracles(near, x)
    assert pg.data.num_nodes > gc.compile(silu, x).data.num_nodes


class WrittenAttention(nn.Module):
    def __init__(self, written: bool, causal: bool):
        super().__init__()
        self.written, self.causal = written, causal
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        if not self.written:
            return self.o(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal))
        scores = q @ k.transpose(-2, -1) * D ** -0.5
        if self.causal:
            n = x.shape[1]
            scores = scores + torch.zeros(n, n).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        return self.o(scores.softmax(-1) @ v)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_written_out_gives_the_sdpa_graph(causal):
    x = (torch.randn(2, T, D),)
    torch.manual_seed(0)
    native = WrittenAttention(False, causal)
    torch.manual_seed(0)
    written = WrittenAttention(True, causal)
    pg = assert_oracles(written, x)
    assert_isomorphic(gc.compile(native, x), pg)
    # and the causal mask is not dropped: causal and full attention differ
    torch.manual_seed(0)
    other = WrittenAttention(True, not causal)
    assert not gc.canonical.isomorphic(pg, gc.compile(other, x))


def test_silu_of_a_sum_written_out_is_silu():
    """``(a + b) * sigmoid(a + b)``: the widest arithmetic cluster reads a and b (no known
    activation of one input); the cluster that stops at the shared sum is SiLU."""
    class Gated(nn.Module):
        def __init__(self, written):
            super().__init__()
            self.written, self.a, self.b, self.o = written, nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            s = self.a(x) + self.b(x)
            return self.o(s * torch.sigmoid(s) if self.written else F.silu(s))

    x = (torch.randn(4, 3),)
    torch.manual_seed(0)
    written = assert_oracles(Gated(True), x)
    torch.manual_seed(0)
    assert_isomorphic(gc.compile(Gated(False), x), written)


class Affine(nn.Module):
    """ResMLP's ``Affine`` (``addcmul(beta, alpha, x)``) or ``addcdiv`` after a hidden layer,
    or the same computation written out (``spelling="plain"``)."""

    def __init__(self, op: str, value: float = 1.0, spelling: str = "fused"):
        super().__init__()
        self.op, self.value, self.spelling = op, value, spelling
        self.a, self.out = nn.Linear(3, 4), nn.Linear(4, 2)
        self.alpha, self.beta = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.spelling == "plain":
            mixed = self.alpha * h if self.op == "addcmul" else h / self.alpha
            return self.out(self.beta + (mixed if self.value == 1 else mixed * self.value))
        if self.op == "addcmul":
            return self.out(torch.addcmul(self.beta, self.alpha, h, value=self.value))
        return self.out(torch.addcdiv(self.beta, h, self.alpha, value=self.value))


@pytest.mark.parametrize("op", ["addcmul", "addcdiv"])
@pytest.mark.parametrize("value", [1.0, 0.5])
def test_addcmul_and_addcdiv_compile_as_written_out(op, value):
    """PyTorch's own decomposition starts with ``value * tensor1``, an op on a parameter
    alone, which the frontend refuses (issue 20); ours puts the activation first."""
    torch.manual_seed(0)
    fused, plain = Affine(op, value).eval(), Affine(op, value, "plain").eval()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3)
    assert_isomorphic(gc.compile(fused, (x,)), gc.compile(plain, (x,)))
    assert_oracles(fused, (x,), trials=4)
    other = Affine(op, 0.25).eval()  # the scalar ``value`` reaches the graph
    other.load_state_dict(fused.state_dict())
    assert not canonical.isomorphic(gc.compile(fused, (x,)), gc.compile(other, (x,)))


class SpanConv(nn.Module):
    """ConvBERT's span-based dynamic convolution: each token's window of neighbours (``unfold``
    along the tokens) mixed by a kernel the token itself computes (a linear layer and a softmax
    over the window's positions)."""

    def __init__(self, kernel: int = 3, dilation: int = 1, width: int = 4):
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.value, self.make_kernel, self.out = nn.Linear(3, width), nn.Linear(3, kernel), nn.Linear(width, 2)

    def forward(self, x):  # [T, 3]
        t = x.shape[0]
        v = self.value(x).transpose(0, 1).unsqueeze(0).unsqueeze(-1)  # [1, C, T, 1]
        pad = self.dilation * (self.kernel - 1) // 2
        windows = F.unfold(v, [self.kernel, 1], dilation=[self.dilation, 1], padding=[pad, 0])  # [1, C*K, T]
        windows = windows.transpose(1, 2).reshape(t, -1, self.kernel)  # [T, C, K]
        weights = torch.softmax(self.make_kernel(x).reshape(t, self.kernel, 1), dim=1)  # [T, K, 1]
        return self.out(torch.tanh(torch.matmul(windows, weights).reshape(t, -1)))


def test_unfold_over_tokens_with_a_dynamic_kernel_passes_every_oracle():
    """``im2col`` converts as padding, strided slices and a stack (views along the tokens)."""
    torch.manual_seed(0)
    x = (torch.randn(6, 3),)
    model = SpanConv().eval()
    graph = assert_oracles(model, x, trials=3)
    dilated = SpanConv(dilation=2).eval()  # the same weights, other neighbours
    dilated.load_state_dict(model.state_dict())
    assert not torch.allclose(model(*x), dilated(*x))
    assert not canonical.isomorphic(graph, gc.compile(dilated, x))
