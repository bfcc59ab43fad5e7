"""Elementwise functions of a parameter computed in ``forward`` (issue 20): Gemma's
``1 + weight``, Mamba's ``-exp(A_log)``. Edges carry the stored values (round trip exact); the
function is named on the node that attaches the parameter, so models that differ only there
compile to different graphs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.testing import assert_oracles

X = torch.randn(3, 4)


class Scaled(nn.Module):
    """A hidden layer, RMS-normalised, times ``fn(w)`` for a parameter ``w``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.a, self.out = nn.Linear(4, 6), nn.Linear(6, 2)
        self.w = nn.Parameter(torch.randn(6) * 0.5)

    def forward(self, x):
        h = self.a(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.out(h * self.fn(self.w))


FUNCTIONS = {
    "w": lambda w: w,
    "1 + w (Gemma)": lambda w: 1.0 + w.float(),
    "2 + w": lambda w: 2.0 + w,
    "-exp(w) (Mamba)": lambda w: -torch.exp(w.float()),
    "exp(w)": lambda w: torch.exp(w),
    "sigmoid(w) * 2": lambda w: torch.sigmoid(w) * 2,
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_a_function_of_a_parameter_compiles_and_passes_the_oracles(name):
    torch.manual_seed(0)
    assert_oracles(Scaled(FUNCTIONS[name]).eval(), (X,), trials=4)


def test_models_differing_only_in_the_function_have_different_graphs():
    torch.manual_seed(0)
    models = {name: Scaled(fn).eval() for name, fn in FUNCTIONS.items()}
    first = next(iter(models.values()))
    for model in models.values():
        model.load_state_dict(first.state_dict())
    graphs = {name: gc.compile(m, (X,)) for name, m in models.items()}
    names = sorted(graphs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not canonical.isomorphic(graphs[a], graphs[b]), (a, b)


class ScaledWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 4))

    def forward(self, x):
        return torch.nn.functional.linear(x, 2.0 * self.w)


def test_a_function_of_a_weight_that_a_rule_cannot_record_is_reported():
    """Only elementwise ops take a transformed parameter (they record the function); a linear
    layer's weight computed as ``2 * w`` is reported as the transform it needs."""
    with pytest.raises(gc.UnsupportedOpsError, match=r"param_transform\[aten.mul.Tensor\]"):
        gc.compile(ScaledWeight().eval(), (X,))


class _PositionBiasAttention(nn.Module):
    """Attention with a relative-position bias table looked up per (query, key) pair, combined
    with a constant (:meth:`combine`) and passed to ``scaled_dot_product_attention`` as
    ``attn_mask``."""

    def __init__(self, tokens: int = 4, heads: int = 2, dim: int = 3):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.qkv, self.out = nn.Linear(5, 3 * heads * dim), nn.Linear(heads * dim, 2)
        self.table = nn.Embedding(2 * tokens - 1, heads)
        pos = torch.arange(tokens)
        self.register_buffer("buckets", pos[None, :] - pos[:, None] + tokens - 1, persistent=False)

    def combine(self, bias: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4)
        bias = self.table(self.buckets).permute(2, 0, 1).unsqueeze(0)  # (1, heads, t, t)
        h = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.combine(bias))
        return self.out(h.transpose(1, 2).reshape(b, t, self.heads * self.dim))


class MaskedPositionBias(_PositionBiasAttention):
    """T5's sdpa path: the bias kept where a constant mask allows and set to a large negative
    number elsewhere (``where(mask, bias, min)``)."""

    def __init__(self, mask: str = "causal", tokens: int = 4, heads: int = 2, dim: int = 3):
        super().__init__(tokens, heads, dim)
        keep = torch.ones(tokens, tokens, dtype=torch.bool).tril()
        if mask == "anti-causal":
            keep = keep.T
        self.register_buffer("keep", keep if mask != "per head" else torch.stack([keep, keep.T]),
                             persistent=False)

    def combine(self, bias):
        return torch.where(self.keep, bias, -1e4)


def test_a_mask_that_differs_per_head_is_refused_in_one_line():
    model, x = MaskedPositionBias("per head").eval(), torch.randn(2, 4, 5)
    with pytest.raises(gc.CompileError, match="masked by a constant that differs along an axis carrying neurons"):
        gc.compile(model, (x,))


class ShiftedWindowBias(_PositionBiasAttention):
    """HF Swin's shifted windows: the bias (``(1, heads, t, t)``) plus a constant mask per window
    (``(windows, 1, t, t)``, 0 or -100); the windows are the batch."""

    def __init__(self, shift: str = "shifted", tokens: int = 4, heads: int = 2, dim: int = 3):
        super().__init__(tokens, heads, dim)
        region = torch.tensor([0, 0, 1, 1] if shift == "shifted" else [0, 1, 1, 1])
        apart = (region[:, None] != region[None, :]).float() * -100.0
        mask = torch.stack([torch.zeros(tokens, tokens), apart])[:, None]  # window 0 unshifted, window 1 split
        if shift == "per head":
            mask = torch.stack([torch.zeros(tokens, tokens), apart])[None]  # (1, heads, t, t): differs per head
        self.register_buffer("mask", mask, persistent=False)

    def combine(self, bias):
        return bias + self.mask


@pytest.mark.parametrize("build, other", [(MaskedPositionBias, "anti-causal"), (ShiftedWindowBias, "other split")],
                         ids=["T5 mask kept by where", "Swin windows' mask added"])
def test_a_position_bias_with_a_constant_compiles_and_passes_the_oracles(build, other):
    """The constant the looked-up bias meets (a mask ``where`` keeps it by, or a mask added to
    it) is part of the structure (its content names the bias's auxiliary node): another constant
    is another graph; the heads stay swappable."""
    torch.manual_seed(0)
    model, x = build().eval(), torch.randn(2, 4, 5)
    assert_oracles(model, (x,), trials=4)
    pg = gc.compile(model, (x,))
    report = gc.check_symmetry(model, (x,), trials=2, graph=pg)
    assert any(what.startswith("attention heads") for what in report.symmetries_checked), report.symmetries_checked
    changed = build(other).eval()  # the same parameters, another function, another graph
    changed.load_state_dict(model.state_dict())
    assert not torch.allclose(model(x), changed(x))
    assert not canonical.isomorphic(pg, gc.compile(changed, (x,)))


def test_a_constant_added_per_head_is_refused_in_one_line():
    model, x = ShiftedWindowBias("per head").eval(), torch.randn(1, 4, 5)
    with pytest.raises(gc.CompileError, match="offset by a constant that differs along an axis carrying neurons"):
        gc.compile(model, (x,))


class AssembledBias(nn.Module):
    """BEiT / EVA-02 attention: the fused qkv projection's bias assembled in ``forward`` from a
    query bias, a zero buffer for the keys (no key bias) and a value bias."""

    def __init__(self, spelling: str = "linear", heads: int = 2, dim: int = 3):
        super().__init__()
        self.spelling, self.heads, self.dim = spelling, heads, dim
        width = heads * dim
        self.qkv = nn.Linear(5, 3 * width, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(width)), nn.Parameter(torch.randn(width))
        self.register_buffer("k_bias", torch.zeros(width), persistent=False)
        self.out = nn.Linear(width, 2)

    def forward(self, x):
        b, t, _ = x.shape
        if self.spelling == "swapped":
            bias = torch.cat((self.v_bias, self.k_bias, self.q_bias))
        else:
            bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        if self.spelling == "add":
            qkv = self.qkv(x) + bias
        else:
            qkv = nn.functional.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(b, t, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4)
        h = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.out(h.transpose(1, 2).reshape(b, t, self.heads * self.dim))


@pytest.mark.parametrize("spelling", ["linear", "add"])
def test_a_bias_assembled_from_parameters_compiles_and_passes_the_oracles(spelling):
    torch.manual_seed(0)
    model, x = AssembledBias(spelling).eval(), torch.randn(2, 4, 5)
    assert_oracles(model, (x,), trials=4)
    pg = gc.compile(model, (x,))
    report = gc.check_symmetry(model, (x,), trials=2, graph=pg)
    assert any("head" in what for what in report.symmetries_checked), report.symmetries_checked
    # one edge per bias entry: the zeros are no parameter and add nothing
    names = [p.name for p in pg.params]
    for bias in ("q_bias", "v_bias"):
        assert int((pg.data.edge_param == names.index(bias)).sum()) == 6
    # which parameter goes where is part of the graph
    swapped = AssembledBias("swapped").eval()
    swapped.load_state_dict(model.state_dict())
    assert not torch.allclose(model(x), swapped(x))
    assert not canonical.isomorphic(pg, gc.compile(swapped, (x,)))


class ConcatenatedScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.s1, self.s2 = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3))

    def forward(self, x):
        return self.a(x) * torch.cat((self.s1, self.s2))


def test_a_concatenation_of_parameters_used_otherwise_is_refused_in_one_line():
    with pytest.raises(gc.CompileError, match=r"param_transform\[aten.cat.default\]"):
        gc.compile(ConcatenatedScale().eval(), (X,))


class WeightNormed(nn.Module):
    """A 1-D conv with weight normalisation (Wav2Vec2's positional conv: ``dim=2``, the kernel
    axis, grouped) or a linear layer (``dim=0``, per output unit), between two linear layers."""

    def __init__(self, layer: str, dim: int):
        super().__init__()
        self.layer = layer
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        inner = nn.Conv1d(4, 4, 3, padding=1, groups=2) if layer == "conv" else nn.Linear(4, 4)
        self.inner = nn.utils.parametrizations.weight_norm(inner, dim=dim)

    def forward(self, x):  # x: [batch, time, 3]
        h = torch.relu(self.a(x))
        if self.layer == "conv":
            h = self.inner(h.transpose(1, 2)).transpose(1, 2)
        else:
            h = self.inner(h)
        return self.b(torch.relu(h))


@pytest.mark.parametrize("layer, dim", [("conv", 2), ("conv", 0), ("conv", -1), ("linear", 0)])
def test_a_weight_normalised_layer_compiles_and_passes_the_oracles(layer, dim):
    torch.manual_seed(0)
    model, x = WeightNormed(layer, dim).eval(), torch.randn(2, 5, 3)
    assert_oracles(model, (x,), trials=4)
    pg = gc.compile(model, (x,))
    names = [p.name for p in pg.params]
    # the stored direction and gain are the edges; the computed weight is no parameter
    assert "inner.parametrizations.weight.original0" in names and "inner.parametrizations.weight.original1" in names
    report = gc.check_symmetry(model, (x,), trials=2, graph=pg)
    assert any("inner" in what for what in report.symmetries_checked), report.symmetries_checked
    # which kernel position each gain scales is part of the graph
    if layer == "conv" and dim == 2:
        other = WeightNormed(layer, dim).eval()
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            gain = other.inner.parametrizations.weight.original0
            gain.copy_(gain.flip(-1))
        assert not torch.allclose(model(x), other(x))
        assert not canonical.isomorphic(pg, gc.compile(other, (x,)))


def test_weight_normalisation_along_the_input_axis_is_refused_in_one_line():
    model = WeightNormed("linear", 1).eval()
    with pytest.raises(gc.CompileError, match="weight normalisation of .* along its input axis"):
        gc.compile(model, (torch.randn(2, 5, 3),))


class ShapeOfParameter(nn.Module):
    """``w.new_ones(n)`` reads only the parameter's dtype and device: a constant (Mamba builds
    its scan state with ``A.new_zeros(...)``)."""

    def __init__(self, spelling: str):
        super().__init__()
        self.spelling = spelling
        self.a, self.out = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        ones = self.a.weight.new_ones(6) if self.spelling == "new_ones" else torch.ones(6)
        return self.out(torch.relu(h + 2 * ones))


def test_a_tensor_made_from_a_parameters_shape_is_a_constant():
    torch.manual_seed(0)
    model = ShapeOfParameter("new_ones").eval()
    assert_oracles(model, (X,), trials=3)
    pg = gc.compile(model, (X,))
    plain = ShapeOfParameter("torch.ones").eval()
    plain.load_state_dict(model.state_dict())
    assert canonical.isomorphic(pg, gc.compile(plain, (X,)))


class LogBuckets(nn.Module):
    """DeBERTa's relative positions: ``torch.tensor(...)`` made in ``forward`` (a lifted tensor
    constant, float) in ``log`` / ``ceil`` / ``where`` arithmetic with ``arange``: constants
    all through, which pick rows of a bias table added to the scores."""

    def __init__(self, base: float):
        super().__init__()
        self.base = base
        self.q, self.out = nn.Linear(4, 4), nn.Linear(4, 2)
        self.bias = nn.Parameter(torch.randn(17))

    def forward(self, x):
        pos = torch.arange(3).view(3, 1) - torch.arange(3).view(1, 3)
        mid = torch.tensor(1.0)
        far = torch.ceil(torch.log(pos.abs().clamp(min=1) / mid) / torch.log(torch.tensor(self.base)) * 2) + mid
        bucket = torch.where(pos.abs() <= mid, pos.float(), far * torch.sign(pos)).long() + 8
        h = self.q(x)
        scores = torch.softmax(h @ h.transpose(-1, -2) + self.bias[bucket], dim=-1)
        return self.out(scores @ h)


def test_arithmetic_on_tensors_made_in_forward_is_constant():
    torch.manual_seed(0)
    model = LogBuckets(4.0).eval()
    assert_oracles(model, (X,), trials=3)
    other = LogBuckets(1.5).eval()  # other buckets, the same parameters
    other.load_state_dict(model.state_dict())
    assert not torch.allclose(model(X), other(X))
    assert not canonical.isomorphic(gc.compile(model, (X,)), gc.compile(other, (X,)))


class StandardisedConv(nn.Module):
    """NF-ResNet's ``ScaledStdConv2d``: each output channel's weights standardised in
    ``forward`` (``batch_norm`` over the reshaped weight, training mode), times a gain and a
    fixed scale, then the convolution."""

    def __init__(self, eps: float = 1e-6, scale: float = 0.5):
        super().__init__()
        self.eps, self.scale = eps, scale
        self.stem, self.head = nn.Conv2d(2, 4, 1), nn.Linear(3, 2)
        self.weight = nn.Parameter(torch.randn(3, 4, 3, 3))
        self.gain = nn.Parameter(torch.randn(3, 1, 1, 1))

    def forward(self, x):
        w = nn.functional.batch_norm(self.weight.reshape(1, 3, -1), None, None, weight=(self.gain * self.scale).view(-1),
                                     training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)
        h = nn.functional.conv2d(torch.relu(self.stem(x)), w, padding=1)
        return self.head(torch.relu(h).mean((2, 3)))


def test_a_standardised_weight_compiles_and_passes_the_oracles():
    torch.manual_seed(0)
    model, x = StandardisedConv().eval(), torch.randn(2, 2, 4, 4)
    assert_oracles(model, (x,), trials=4)
    pg = gc.compile(model, (x,))
    report = gc.check_symmetry(model, (x,), trials=2, graph=pg)
    assert any(what.startswith("output channels of conv at stem") for what in report.symmetries_checked)
    assert {"weight", "gain"} <= {p.name for p in pg.params}
    # eps, and the fixed scale the gain is multiplied by, are part of the function and of the graph
    for other in (StandardisedConv(eps=0.5).eval(), StandardisedConv(scale=0.25).eval()):
        other.load_state_dict(model.state_dict())
        assert not torch.allclose(model(x), other(x))
        assert not canonical.isomorphic(pg, gc.compile(other, (x,)))



class WeightNormedOperand(nn.Module):
    """A weight-normalised parameter used as an elementwise operand after a function of it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.g = nn.utils.parametrizations.weight_norm(nn.Linear(1, 4), dim=0)

    def forward(self, x):
        return self.a(x).unsqueeze(-1) * (self.g.weight * 2)


def test_a_function_of_a_weight_normalised_parameter_is_refused_not_mis_encoded():
    """``w * 2`` used to drop the normalisation: the graph carried 2 v and no gain g at all."""
    with pytest.raises(gc.CompileError, match=r"param_transform\[aten._weight_norm.default\]"):
        gc.compile(WeightNormedOperand().eval(), (torch.randn(2, 3),))
