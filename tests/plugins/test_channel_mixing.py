"""Cross-covariance attention (XCiT, EdgeNeXt, DaViT's channel attention) and factorised
attention (CoaT): products of two activations whose outer axes carry neurons
(``gmn_plugins.attention``, channel attention)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical, testing


class CrossCovariance(nn.Module):
    """XCiT's XCA: per head, scores between query dims and key dims over the tokens (q and k
    l2-normalised over the tokens, a learned temperature per head), softmax over the key dims
    (``softmax_dim``), and the value dims mixed into the output dims."""

    def __init__(self, dim: int = 8, heads: int = 2, softmax_dim: int = -1, keys_first: bool = False):
        super().__init__()
        self.heads, self.softmax_dim, self.keys_first = heads, softmax_dim, keys_first
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.temperature = nn.Parameter(1 + torch.rand(heads, 1, 1))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1).unbind(0)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if self.keys_first:  # the roles of q and k exchanged
            q, k = k, q
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=self.softmax_dim)
        return self.proj((attn @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class Factorised(nn.Module):
    """CoaT's factorised attention: ``q @ (softmax(k over tokens)^T @ v)``."""

    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        factor = k.softmax(dim=2).transpose(-1, -2) @ v
        return self.proj((q @ factor).transpose(1, 2).reshape(b, n, c))


X = torch.randn(1, 5, 8)


@pytest.mark.parametrize("build", [CrossCovariance, Factorised], ids=["xca", "factorised"])
def test_channel_attention_passes_every_oracle(build):
    model = testing.randomized(build()).eval()
    testing.assert_oracles(model, (X,), trials=3, max_pairs=6)


@pytest.mark.parametrize("build", [CrossCovariance, Factorised], ids=["xca", "factorised"])
def test_the_graph_has_exactly_the_symmetries_of_the_function(build):
    """Per head, the query dims move with the output dims they produce and the key dims with
    the value dims (each of the two a free permutation of 4), and the two heads swap:
    (4! * 4!)^2 * 2 automorphisms, no more (BLISS's exact count)."""
    pg = gc.compile(testing.randomized(build()).eval(), (X,))
    assert canonical.Extender.of(pg).count() == (math.factorial(4) ** 2) ** 2 * 2


def test_the_softmax_axis_and_the_roles_of_q_and_k_are_in_the_graph():
    torch.manual_seed(0)
    over_keys = CrossCovariance().eval()
    over_queries = CrossCovariance(softmax_dim=-2).eval()
    over_queries.load_state_dict(over_keys.state_dict())
    keys_first = CrossCovariance(keys_first=True).eval()
    keys_first.load_state_dict(over_keys.state_dict())
    graph = gc.compile(over_keys, (X,))
    for other in (over_queries, keys_first):
        assert not torch.allclose(over_keys(X), other(X))
        assert not canonical.isomorphic(graph, gc.compile(other, (X,)))


@pytest.mark.parametrize("build", [CrossCovariance, Factorised], ids=["xca", "factorised"])
def test_torch_and_its_onnx_export_give_isomorphic_graphs(build, tmp_path):
    model = testing.randomized(build()).eval()
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(model, (X,), path, dynamo=False, opset_version=17)
    assert canonical.isomorphic(gc.compile(path), gc.compile(model, (X,)))
