"""Two models that differ only in one hyper-parameter compute different functions, so their
graphs must differ (issue 16, item 3: stride, padding, dilation, groups, eps, activation
parameters, a sine's frequency, constant masks...). Each case builds the two models with the
same parameter values, checks that their outputs differ (the hyper-parameter matters), and
that the compiled graphs are not isomorphic (canonical labelling)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical


class Head(nn.Module):
    """``body`` then a global average pool (images) and a linear read-out."""

    def __init__(self, body: nn.Module, channels: int, image: bool = True):
        super().__init__()
        self.body, self.image, self.out = body, image, nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.out(h.mean(dim=(2, 3)) if self.image else h)


class Lambda(nn.Module):
    """A weight layer, then ``fn`` of its output."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n_in: int = 4, width: int = 6):
        super().__init__()
        self.fn, self.a = fn, nn.Linear(n_in, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.a(x))


class Masked(nn.Module):
    def __init__(self, mask: list[float]):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
        self.register_buffer("mask", torch.tensor(mask), persistent=False)  # a constant of the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) * self.mask)


class Rotary(nn.Module):
    """One attention head whose queries and keys are rotated by RoPE with frequency ``base``."""

    def __init__(self, base: float):
        super().__init__()
        self.base = base
        self.q, self.k, self.v, self.o = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv = 1.0 / (self.base ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
        freqs = torch.outer(torch.arange(x.shape[1], dtype=torch.float32), inv)
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

        def rotate(h: torch.Tensor) -> torch.Tensor:
            half = torch.cat([-h[..., 4:], h[..., :4]], -1)
            return h * cos + half * sin

        return self.o(F.scaled_dot_product_attention(rotate(self.q(x)), rotate(self.k(x)), self.v(x)))


class Window(nn.Module):
    """A 1x1 conv, ``fn`` of its output, then two spatial positions read: differences that move
    entries around (padding modes, rolls, resizing) change the function."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.conv, self.fn, self.out = nn.Conv2d(4, 4, 1), fn, nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fn(self.conv(x))
        return self.out(torch.relu(h)[:, :, 0, 1] + h[:, :, -1, 0] ** 2)


class Attention(nn.Module):
    """``nn.MultiheadAttention`` or ``nn.TransformerEncoderLayer`` (``layer``) between two
    linear layers."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.a, self.layer, self.o = nn.Linear(4, 8), layer, nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if isinstance(self.layer, nn.MultiheadAttention):
            return self.o(self.layer(h, h, h, need_weights=False)[0])
        return self.o(self.layer(h))


class Recurrent(nn.Module):
    def __init__(self, nonlinearity: str):
        super().__init__()
        self.rnn, self.out = nn.RNN(4, 5, batch_first=True, nonlinearity=nonlinearity), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x)[0])


def _pool(pool: nn.Module, relu: bool = True) -> Callable[[], nn.Module]:
    return lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), *([nn.ReLU()] if relu else []), pool), 4)


def _encoder(**kw) -> Callable[[], nn.Module]:
    return lambda: Attention(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, **kw))


def _tokens(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(Lambda(fn), nn.Linear(6, 2))


def _conv(**kw) -> Callable[[], nn.Module]:
    return lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 3, **kw), nn.ReLU()), 4)


def _mlp(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(Lambda(fn), nn.Linear(6, 2))


IMAGE, VECTOR, TOKENS = torch.randn(2, 4, 9, 9), torch.randn(3, 4), torch.randn(2, 5, 4)
CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module], torch.Tensor]] = {
    "conv stride": (_conv(stride=1), _conv(stride=2), IMAGE),
    "conv padding": (_conv(padding=0), _conv(padding=1), IMAGE),
    "conv dilation": (_conv(dilation=1), _conv(dilation=2), IMAGE),
    "conv groups": (_conv(groups=1), _conv(groups=2), IMAGE),
    "batch norm eps": (lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, eps=1e-5)), 4),
                       lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, eps=0.5)), 4), IMAGE),
    "group norm eps": (lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4, eps=1e-5)), 4),
                       lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4, eps=0.5)), 4), IMAGE),
    "group norm groups": (lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4)), 4),
                          lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(4, 4)), 4), IMAGE),
    "layer norm eps": (_mlp(lambda h: F.layer_norm(h, (6,), eps=1e-5)), _mlp(lambda h: F.layer_norm(h, (6,), eps=0.5)),
                       VECTOR),
    "leaky relu slope": (_mlp(lambda h: F.leaky_relu(h, 0.01)), _mlp(lambda h: F.leaky_relu(h, 0.3)), VECTOR),
    "elu alpha": (_mlp(lambda h: F.elu(h, 1.0)), _mlp(lambda h: F.elu(h, 0.5)), VECTOR),
    "celu alpha": (_mlp(lambda h: F.celu(h, 1.0)), _mlp(lambda h: F.celu(h, 0.5)), VECTOR),
    "softplus beta": (_mlp(lambda h: F.softplus(h, beta=1.0)), _mlp(lambda h: F.softplus(h, beta=3.0)), VECTOR),
    "hardtanh bounds": (_mlp(lambda h: F.hardtanh(h, -1.0, 1.0)), _mlp(lambda h: F.hardtanh(h, -0.5, 0.5)), VECTOR),
    "clamp bound": (_mlp(lambda h: h.clamp(min=0.0)), _mlp(lambda h: h.clamp(min=0.2)), VECTOR),
    "sine frequency (SIREN w0)": (_mlp(lambda h: torch.sin(30.0 * h)), _mlp(lambda h: torch.sin(10.0 * h)), VECTOR),
    "gelu approximation": (_mlp(lambda h: F.gelu(h)), _mlp(lambda h: F.gelu(h, approximate="tanh")), VECTOR),
    "softmax axis": (lambda: nn.Sequential(Lambda(lambda h: torch.softmax(h, -1)), nn.Linear(6, 2)),
                     lambda: nn.Sequential(Lambda(lambda h: torch.softmax(h, 1)), nn.Linear(6, 2)), TOKENS),
    "rotary base": (lambda: Rotary(10000.0), lambda: Rotary(100.0), TOKENS),
    "constant mask": (lambda: Masked([1.0, 0.0, 1.0, 1.0]), lambda: Masked([1.0, 1.0, 0.0, 1.0]), VECTOR),
    "max vs average pool": (lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.MaxPool2d(2)), 4),
                            lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.AvgPool2d(2)), 4), IMAGE),
    "pool window": (lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.AvgPool2d(2)), 4),
                    lambda: Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.AvgPool2d(3)), 4), IMAGE),
    "conv padding mode": (_conv(padding=1), _conv(padding=1, padding_mode="reflect"), IMAGE),
    "conv padding mode replicate vs circular": (_conv(padding=1, padding_mode="replicate"),
                                                _conv(padding=1, padding_mode="circular"), IMAGE),
    "average pool ceil mode": (_pool(nn.AvgPool2d(2)), _pool(nn.AvgPool2d(2, ceil_mode=True)), IMAGE),
    "average pool counts padding": (_pool(nn.AvgPool2d(3, padding=1)),
                                    _pool(nn.AvgPool2d(3, padding=1, count_include_pad=False)), IMAGE),
    "max pool ceil mode": (_pool(nn.MaxPool2d(2), relu=False), _pool(nn.MaxPool2d(2, ceil_mode=True), relu=False),
                           IMAGE),
    "max pool dilation": (_pool(nn.MaxPool2d(2), relu=False), _pool(nn.MaxPool2d(2, dilation=2), relu=False), IMAGE),
    "adaptive pool size": (_pool(nn.AdaptiveAvgPool2d(2)), _pool(nn.AdaptiveAvgPool2d(3)), IMAGE),
    "bilinear align corners": (lambda: Window(lambda h: F.interpolate(h, scale_factor=2, mode="bilinear")),
                               lambda: Window(lambda h: F.interpolate(h, scale_factor=2, mode="bilinear",
                                                                      align_corners=True)), IMAGE),
    "reflect vs replicate padding": (lambda: Window(lambda h: F.pad(h, (1, 1, 1, 1), mode="reflect")),
                                     lambda: Window(lambda h: F.pad(h, (1, 1, 1, 1), mode="replicate")), IMAGE),
    "roll shift": (lambda: Window(lambda h: torch.roll(h, 1, 3)), lambda: Window(lambda h: torch.roll(h, 2, 3)), IMAGE),
    "variance correction": (_tokens(lambda h: h - h.var(-1, keepdim=True)),
                            _tokens(lambda h: h - h.var(-1, keepdim=True, correction=0)), TOKENS),
    "std unbiased": (_tokens(lambda h: h / h.std(-1, keepdim=True)),
                     _tokens(lambda h: h / h.std(-1, unbiased=False, keepdim=True)), TOKENS),
    "attention scale": (_tokens(lambda h: F.scaled_dot_product_attention(h, h, h)),
                        _tokens(lambda h: F.scaled_dot_product_attention(h, h, h, scale=0.1)), TOKENS),
    "attention heads": (lambda: Attention(nn.MultiheadAttention(8, 1, batch_first=True)),
                        lambda: Attention(nn.MultiheadAttention(8, 2, batch_first=True)), TOKENS),
    "encoder norm first": (_encoder(), _encoder(norm_first=True), TOKENS),
    "encoder activation": (_encoder(), _encoder(activation="gelu"), TOKENS),
    "recurrent nonlinearity": (lambda: Recurrent("tanh"), lambda: Recurrent("relu"), TOKENS),
    "causal attention": (lambda: nn.Sequential(Lambda(lambda h: F.scaled_dot_product_attention(h, h, h)),
                                               nn.Linear(6, 2)),
                         lambda: nn.Sequential(Lambda(lambda h: F.scaled_dot_product_attention(h, h, h, is_causal=True)),
                                               nn.Linear(6, 2)), TOKENS),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_models_differing_in_one_hyperparameter_have_different_graphs(name):
    make_a, make_b, x = CASES[name]
    torch.manual_seed(0)
    a = make_a().eval()
    b = make_b().eval()
    # same parameter values where the shapes agree: only the hyper-parameter differs
    shapes = {k: v.shape for k, v in b.state_dict().items()}
    b.load_state_dict({k: v for k, v in a.state_dict().items() if shapes[k] == v.shape}, strict=False)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x)), "the case does not change the function"
    graph_a, graph_b = gc.compile(a, (x,)), gc.compile(b, (x,))
    assert not canonical.isomorphic(graph_a, graph_b), f"{name}: two different functions, one graph"
