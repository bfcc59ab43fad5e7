"""Randomly generated MLP and CNN architectures: round trip and soundness.

Architectures vary depth, widths, kernel sizes, strides, padding, groups (dividing both channel
counts), norms (batch / layer / group / instance), activations, biases and residual
connections where shapes allow. Every generated model must round-trip bit for bit, and random
automorphisms of its graph must preserve its function. Generation is derandomized so that the
run time is predictable; failures print the architecture.
"""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gmn_compiler as gc
from oracles import assert_round_trip, randomize_buffers

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
    "leaky_relu": lambda: nn.LeakyReLU(0.1), "elu": nn.ELU, "softplus": nn.Softplus,
    "hardswish": nn.Hardswish, "identity": nn.Identity,
}


def _check(model: nn.Module, inputs: tuple) -> None:
    model = randomize_buffers(model).eval()
    pg = assert_round_trip(model, inputs)
    n_entries = sum(t.numel() for k, t in model.state_dict().items() if "num_batches" not in k)
    assert int((pg.data.edge_param >= 0).sum()) == n_entries
    report = gc.check_symmetry(model, inputs, trials=3, graph=pg, completeness=False, timeout=20)
    assert report.automorphisms_checked == 3


# ------------------------------------------------------------------ MLPs
@st.composite
def mlp_specs(draw):
    n_in = draw(st.integers(1, 4))
    layers = []
    width = n_in
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(1, 5))
        layers.append({
            "out": out,
            "bias": draw(st.booleans()),
            "norm": draw(st.sampled_from([None, "layer", "batch"])),
            "act": draw(st.sampled_from(sorted(ACTIVATIONS))),
            "residual": out == width and draw(st.booleans()),
        })
        width = out
    return {"in": n_in, "layers": layers, "out": draw(st.integers(1, 3)),
            "tokens": draw(st.sampled_from([None, 3]))}


class GeneratedMLP(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.linears, self.norms, self.acts = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        width = spec["in"]
        for layer in spec["layers"]:
            self.linears.append(nn.Linear(width, layer["out"], bias=layer["bias"]))
            norm = {None: nn.Identity(), "layer": nn.LayerNorm(layer["out"]),
                    "batch": nn.BatchNorm1d(layer["out"])}[layer["norm"]]
            if layer["norm"] == "batch" and spec["tokens"]:
                norm = nn.LayerNorm(layer["out"])  # BatchNorm1d wants channels on axis 1
            self.norms.append(norm)
            self.acts.append(ACTIVATIONS[layer["act"]]())
            width = layer["out"]
        self.head = nn.Linear(width, spec["out"])

    def forward(self, x):
        h = x
        for layer, linear, norm, act in zip(self.spec["layers"], self.linears, self.norms, self.acts):
            z = act(norm(linear(h)))
            h = z + h if layer["residual"] else z
        return self.head(h)


@SETTINGS
@given(mlp_specs())
def test_generated_mlps(spec):
    shape = (2, spec["tokens"], spec["in"]) if spec["tokens"] else (3, spec["in"])
    _check(GeneratedMLP(spec), (torch.randn(*shape),))


# ------------------------------------------------------------------ CNNs
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def cnn_specs(draw):
    c_in = draw(st.integers(1, 3))
    size = draw(st.integers(3, 6))
    layers = []
    channels, spatial = c_in, size
    for _ in range(draw(st.integers(1, 3))):
        # channel counts with common divisors and shape-preserving layers are drawn often, so
        # that grouped convolutions and residual connections are common
        out = draw(st.one_of(st.just(channels), st.sampled_from([2, 4, 6]), st.integers(1, 6)))
        if draw(st.booleans()):  # shape-preserving: stride 1, odd kernel, "same" padding
            kernel = draw(st.sampled_from([1, 3]))
            padding, stride = kernel // 2, 1
        else:
            kernel = draw(st.integers(1, min(3, spatial)))
            padding = draw(st.integers(0, kernel // 2))
            stride = draw(st.integers(1, 2))
        new_spatial = (spatial + 2 * padding - kernel) // stride + 1
        groups = draw(st.sampled_from(_divisors(math.gcd(channels, out))[::-1]))
        # instance norm needs more than one spatial position to normalise over
        norm = draw(st.sampled_from([None, "batch", "group"] + (["instance"] if new_spatial > 1 else [])))
        layers.append({
            "out": out, "kernel": kernel, "padding": padding, "stride": stride, "groups": groups,
            "bias": draw(st.booleans()), "norm": norm,
            "norm_groups": draw(st.sampled_from(_divisors(out))) if norm == "group" else None,
            "act": draw(st.sampled_from(sorted(ACTIVATIONS))),
            "residual": out == channels and new_spatial == spatial and draw(st.booleans()),
        })
        channels, spatial = out, new_spatial
    head = draw(st.sampled_from(["avg", "max", "flatten"]))
    return {"in": c_in, "size": size, "layers": layers, "head": head, "final": (channels, spatial),
            "out": draw(st.integers(1, 3))}


class GeneratedCNN(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.convs, self.norms, self.acts = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        channels = spec["in"]
        for layer in spec["layers"]:
            out = layer["out"]
            self.convs.append(nn.Conv2d(channels, out, layer["kernel"], stride=layer["stride"],
                                        padding=layer["padding"], groups=layer["groups"],
                                        bias=layer["bias"]))
            self.norms.append({None: nn.Identity(), "batch": nn.BatchNorm2d(out),
                               "group": nn.GroupNorm(layer["norm_groups"] or 1, out),
                               "instance": nn.InstanceNorm2d(out, affine=True)}[layer["norm"]])
            self.acts.append(ACTIVATIONS[layer["act"]]())
            channels = out
        c, s = spec["final"]
        self.head = nn.Linear(c * s * s if spec["head"] == "flatten" else c, spec["out"])

    def forward(self, x):
        h = x
        for layer, conv, norm, act in zip(self.spec["layers"], self.convs, self.norms, self.acts):
            z = act(norm(conv(h)))
            h = z + h if layer["residual"] else z
        if self.spec["head"] == "avg":
            h = h.mean((2, 3))
        elif self.spec["head"] == "max":
            h = torch.amax(h, (2, 3))
        else:
            h = h.flatten(1)
        return self.head(h)


@SETTINGS
@given(cnn_specs())
def test_generated_cnns(spec):
    _check(GeneratedCNN(spec), (torch.randn(2, spec["in"], spec["size"], spec["size"]),))
