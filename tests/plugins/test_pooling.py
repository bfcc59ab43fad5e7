"""plugins/pooling.py: avg / max / adaptive / global pooling, means and sums over spatial or
token axes, and reductions over every neuron axis (which carry no neurons afterwards)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from oracles import (assert_isomorphic, assert_not_isomorphic, assert_oracles,
                     assert_same_function, permute_cols, permute_rows, permuted_copy)

S = gc.schema
ACT = S.node_column("activation")


def _code(name):
    return S.code(S.ACTIVATIONS, name)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Pooled(nn.Module):
    """conv(2 -> 4) -> relu -> pool -> flatten -> linear(4 * cells -> 2)."""

    def __init__(self, dims: int, pool: nn.Module, cells: int):
        super().__init__()
        self.c = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](2, 4, 2)
        self.pool = pool
        self.l = nn.Linear(4 * cells, 2)
        self.cells = cells

    def forward(self, x):
        return self.l(self.pool(torch.relu(self.c(x))).flatten(1))


POOLS = {
    # name: (dims, pool, cells after pooling, input shape, recorded activation)
    "maxpool2d": (2, lambda: nn.MaxPool2d(2), 4, (2, 2, 5, 5), "max_pool"),
    "avgpool2d": (2, lambda: nn.AvgPool2d(2), 4, (2, 2, 5, 5), "avg_pool"),
    "avgpool2d-stride-pad": (2, lambda: nn.AvgPool2d(3, stride=2, padding=1), 4, (2, 2, 5, 5), "avg_pool"),
    "adaptive-avg2d": (2, lambda: nn.AdaptiveAvgPool2d((2, 1)), 2, (2, 2, 5, 5), "avg_pool"),
    "adaptive-max2d": (2, lambda: nn.AdaptiveMaxPool2d(1), 1, (2, 2, 5, 5), "max_pool"),
    "global-avg2d": (2, lambda: nn.AdaptiveAvgPool2d(1), 1, (2, 2, 5, 5), "avg_pool"),
    "mean-hw": (2, lambda: Lambda(lambda h: h.mean((2, 3))), 1, (2, 2, 5, 5), "avg_pool"),
    "mean-hw-keepdim": (2, lambda: Lambda(lambda h: h.mean((-2, -1), keepdim=True)), 1, (2, 2, 5, 5), "avg_pool"),
    "sum-hw": (2, lambda: Lambda(lambda h: h.sum((2, 3))), 1, (2, 2, 5, 5), "sum_pool"),
    "amax-hw": (2, lambda: Lambda(lambda h: h.amax((2, 3))), 1, (2, 2, 5, 5), "max_pool"),
    "maxpool1d": (1, lambda: nn.MaxPool1d(2), 3, (2, 2, 7), "max_pool"),
    "avgpool1d": (1, lambda: nn.AvgPool1d(3), 2, (2, 2, 7), "avg_pool"),
    "adaptive-avg1d": (1, lambda: nn.AdaptiveAvgPool1d(1), 1, (2, 2, 7), "avg_pool"),
    "adaptive-max1d": (1, lambda: nn.AdaptiveMaxPool1d(2), 2, (2, 2, 7), "max_pool"),
    "maxpool3d": (3, lambda: nn.MaxPool3d(2), 1, (1, 2, 3, 3, 3), "max_pool"),
    "avgpool3d": (3, lambda: nn.AvgPool3d(2), 1, (1, 2, 3, 3, 3), "avg_pool"),
    "adaptive-avg3d": (3, lambda: nn.AdaptiveAvgPool3d(1), 1, (1, 2, 3, 3, 3), "avg_pool"),
}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pooling(name):
    dims, make, cells, shape, recorded = POOLS[name]
    model = Pooled(dims, make(), cells).eval()
    inputs = (torch.randn(*shape),)
    pg = assert_oracles(model, inputs, trials=3)
    d = pg.data
    assert d.edge_index.shape[1] - int((d.edge_param < 0).sum()) == sum(p.numel() for p in model.parameters())
    # the pooled value gets 4 nodes of its own (its input's nodes already carry relu), linked
    # one-to-one by structural edges; they record the pooling in the activation column
    acts = d.x[:, ACT].long()
    assert int((acts == _code(recorded)).sum()) == 4
    assert int((acts == _code("relu")).sum()) == 4

    p = torch.tensor([2, 0, 3, 1])
    cols = (p.view(4, 1) * cells + torch.arange(cells)).reshape(-1)
    permuted = permuted_copy(model, lambda m: (permute_rows(m.c, p), permute_cols(m.l, cols)))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


@pytest.mark.parametrize("dims", [1, 2])
def test_max_and_avg_pooling_are_told_apart(dims):
    inputs = (torch.randn(2, 2, 5, 5) if dims == 2 else torch.randn(2, 2, 7),)
    pools = {2: (nn.MaxPool2d(2), nn.AvgPool2d(2), 4), 1: (nn.MaxPool1d(2), nn.AvgPool1d(2), 3)}[dims]
    maxed = Pooled(dims, pools[0], pools[2]).eval()
    averaged = Pooled(dims, pools[1], pools[2]).eval()
    averaged.load_state_dict(maxed.state_dict())
    assert_not_isomorphic(gc.compile(maxed, inputs), gc.compile(averaged, inputs))


def test_pooling_right_after_a_conv_reuses_its_nodes():
    """conv -> avg pool with nothing in between: the pool may mark the conv's own nodes."""
    class ConvPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.l = nn.Conv2d(2, 3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.l(F.adaptive_avg_pool2d(self.c(x), 1).flatten(1))

    model = ConvPool().eval()
    pg = assert_oracles(model, (torch.randn(2, 2, 5, 5),), trials=3)
    assert pg.data.num_nodes == 2 + 3 + 2 + 2  # inputs, channels, outputs, bias nodes
    assert int((pg.data.x[:, ACT].long() == _code("avg_pool")).sum()) == 3


class TokenPool(nn.Module):
    """Tokens [B, N, 4] -> linear -> relu -> reduce over tokens -> linear."""

    def __init__(self, reduce):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 2)
        self.reduce = reduce

    def forward(self, x):
        return self.l2(self.reduce(torch.relu(self.l1(x))))


@pytest.mark.parametrize("name,reduce,recorded", [
    ("mean", lambda h: h.mean(1), "avg_pool"),
    ("sum", lambda h: h.sum(dim=1), "sum_pool"),
    ("max", lambda h: h.max(1).values, "max_pool"),
    ("amax", lambda h: h.amax(1), "max_pool"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_reduction_over_tokens(name, reduce, recorded):
    model = TokenPool(reduce).eval()
    inputs = (torch.randn(2, 3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    assert int((pg.data.x[:, ACT].long() == _code(recorded)).sum()) == 5
    p = torch.tensor([3, 0, 4, 1, 2])
    permuted = permuted_copy(model, lambda m: (permute_rows(m.l1, p), permute_cols(m.l2, p)))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))
    permuted = permuted_copy(model, lambda m: permute_rows(m.l1, p))
    assert_not_isomorphic(pg, gc.compile(permuted, inputs))


# ------------------------------------------------------------------ reductions over the features
def _centered(h):
    """LayerNorm-like centering written out: h - mean over the features, over its RMS."""
    centered = h - h.mean(-1, keepdim=True)
    return centered / (centered.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()


NORMS = {
    "centering": _centered,
    "normalize": lambda h: F.normalize(h, dim=-1),
    "norm-method": lambda h: h / h.norm(dim=-1, keepdim=True),
    "linalg": lambda h: h * torch.linalg.vector_norm(h, dim=-1, keepdim=True),
    # statistics over the features: a LayerNorm written with var / std, a log-softmax
    "var": lambda h: (h - h.mean(-1, keepdim=True)) / (h.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt(),
    "std": lambda h: h / h.std(-1, keepdim=True),
    "logsumexp": lambda h: h - h.logsumexp(-1, keepdim=True),
}


class Normalized(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.l1, self.l2, self.fn = nn.Linear(4, 5), nn.Linear(5, 2), fn

    def forward(self, x):
        return self.l2(self.fn(self.l1(x)))


@pytest.mark.parametrize("name", sorted(NORMS))
def test_vector_norm_over_the_features_is_invariant(name):
    """A reduction over the hidden units (mean, 2-norm, variance, ...) is invariant to
    permuting them: one node per reduction, fed by every unit, and the hidden-unit symmetry
    stays."""
    model = Normalized(NORMS[name]).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    assert pg.summary["reduce"]["nodes"] == pg.summary["reduce"]["ops"]
    p = torch.tensor([3, 0, 4, 1, 2])
    permuted = permuted_copy(model, lambda m: (permute_rows(m.l1, p), permute_cols(m.l2, p)))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


class PerGroup(nn.Module):
    """Hidden units viewed as 2 groups of 3, reduced per group: scaled to unit 2-norm (as
    cosine attention normalises q and k per head) or summed."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6 if how == "normalize" else 2, 2)

    def forward(self, x):
        h = self.l1(x).view(-1, 2, 3)
        h = F.normalize(h, dim=-1) if self.how == "normalize" else h.sum(-1)
        return self.l2(h.flatten(1))


@pytest.mark.parametrize("how", ["normalize", "sum"])
def test_reduction_within_groups_of_units_keeps_the_groups(how):
    """Units may be permuted inside a group (and whole groups swapped), not across groups:
    the hidden-unit symmetry of ``l1`` must no longer be declared (every seed of the
    completeness oracle would otherwise find it missing)."""
    model = PerGroup(how).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=4)
    assert not any("at l1" in s["what"] for s in pg.symmetries)
    for seed in range(4):
        gc.check_symmetry(model, inputs, trials=1, seed=seed, graph=pg)
    if how == "normalize":
        activation = pg.data.x[:, ACT]
        assert int((activation == _code("square")).sum()) == 6
        assert int((activation == _code("sqrt")).sum()) == 2  # one norm per group
    within = torch.tensor([2, 0, 1, 3, 4, 5])
    swap = torch.tensor([3, 4, 5, 0, 1, 2])
    across = torch.tensor([3, 1, 2, 0, 4, 5])  # one unit to the other group: not a symmetry
    for p in (within, swap, across):
        def permute(m, p=p):
            permute_rows(m.l1, p)
            if how == "normalize":
                permute_cols(m.l2, p)
            elif p is swap:
                permute_cols(m.l2, torch.tensor([1, 0]))
        permuted = permuted_copy(model, permute)
        if p is not across:
            assert_same_function(model, permuted, inputs)
            assert_isomorphic(pg, gc.compile(permuted, inputs))
        else:
            assert not torch.allclose(model(*inputs), permuted(*inputs), atol=1e-5)
            assert_not_isomorphic(pg, gc.compile(permuted, inputs))


def test_other_vector_norms_are_reported():
    model = Normalized(lambda h: h / torch.linalg.vector_norm(h, ord=1, dim=-1, keepdim=True)).eval()
    with pytest.raises(gc.UnsupportedOpsError, match="order 1"):
        gc.compile(model, (torch.randn(3, 4),))


def test_statistics_within_groups_are_reported():
    model = Normalized(lambda h: h.view(-1, 5, 1).var(-1)).eval()
    with pytest.raises(gc.CompileError, match="var over some but not all neuron axes"):
        gc.compile(model, (torch.randn(3, 4),))


class _Pooled(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.pool, self.c, self.o = pool, nn.Conv2d(2, 3, 1), nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.o(self.pool(self.c(x)))


def test_pooling_arguments_left_out_take_their_defaults():
    """``avg_pool2d(..., count_include_pad=False)`` traces with five positional arguments and
    no divisor; ``max_pool2d(x, 3, 1, 1, 2)`` gives a dilation and no ceil_mode: the omitted
    trailing arguments are their defaults (not the next argument's)."""
    x = (torch.randn(1, 2, 6, 6),)
    torch.manual_seed(0)
    excluded = assert_oracles(_Pooled(lambda h: F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)), x)
    torch.manual_seed(0)
    included = gc.compile(_Pooled(lambda h: F.avg_pool2d(h, 3, 1, 1)), x)
    assert_not_isomorphic(excluded, included)
    torch.manual_seed(0)
    short = gc.compile(_Pooled(lambda h: F.max_pool2d(h, 3, 1, 1, 2)), x)
    torch.manual_seed(0)
    explicit = gc.compile(_Pooled(lambda h: F.max_pool2d(h, 3, 1, 1, 2, ceil_mode=False)), x)
    assert_isomorphic(short, explicit)


class ResponseNorm(nn.Module):
    """ConvNeXt-V2's global response normalisation: the 2-norm of each channel over the
    positions, divided by its mean over the channels, scales the input (``x * (g * n + 1) + b``)."""

    def __init__(self, over: str = "positions"):
        super().__init__()
        self.over = over
        self.conv, self.out = nn.Conv2d(2, 4, 1), nn.Linear(4, 2)
        self.gamma, self.beta = nn.Parameter(torch.randn(4, 1, 1)), nn.Parameter(torch.randn(4, 1, 1))

    def forward(self, x):
        h = self.conv(x)
        if self.over == "positions":
            g = torch.linalg.vector_norm(h, ord=2, dim=(2, 3), keepdim=True)
        else:  # a sum of squares: the same units and positions, another function
            g = h.pow(2).sum(dim=(2, 3), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
        return self.out((h + self.gamma * (h * n) + self.beta).mean((2, 3)))


def test_a_vector_norm_over_positions_is_one_value_per_unit():
    torch.manual_seed(0)
    model, x = ResponseNorm().eval(), torch.randn(2, 2, 3, 3)
    pg = assert_oracles(model, (x,), trials=4)
    p = torch.tensor([2, 0, 3, 1])

    def permute(m):
        permute_rows(m.conv, p)
        permute_cols(m.out, p)
        m.gamma.copy_(m.gamma[p])
        m.beta.copy_(m.beta[p])
    permuted = permuted_copy(model, permute)
    assert_same_function(model, permuted, (x,))
    assert_isomorphic(pg, gc.compile(permuted, (x,)))
    squares = ResponseNorm("squares").eval()
    squares.load_state_dict(model.state_dict())
    assert not torch.allclose(model(x), squares(x))
    assert_not_isomorphic(pg, gc.compile(squares, (x,)))


GLOBAL_SPELLINGS = {
    # name: (pool, the same function spelled as a reduction over the trailing axes)
    "avg": (lambda: nn.AdaptiveAvgPool2d(1), lambda: Lambda(lambda h: h.mean((2, 3), keepdim=True))),
    "avg, axes listed backwards": (lambda: nn.AdaptiveAvgPool2d(1), lambda: Lambda(lambda h: h.mean((3, 2), keepdim=True))),
    "max": (lambda: nn.AdaptiveMaxPool2d(1), lambda: Lambda(lambda h: h.amax((-2, -1), keepdim=True))),
}


@pytest.mark.parametrize("name", sorted(GLOBAL_SPELLINGS))
def test_a_mean_or_max_over_all_positions_is_global_pooling(name):
    """``x.mean((2, 3))`` is ``adaptive_avg_pool2d(x, 1)`` (and the ONNX exporter writes the
    latter as ReduceMean): one function, one graph."""
    pool, reduce = GLOBAL_SPELLINGS[name]
    x = torch.randn(2, 2, 5, 5)
    torch.manual_seed(0)
    a = Pooled(2, pool(), 1).eval()
    b = Pooled(2, reduce(), 1).eval()
    b.load_state_dict(a.state_dict())
    assert_same_function(a, b, (x,))
    assert_isomorphic(assert_oracles(a, (x,)), assert_oracles(b, (x,)))


@pytest.mark.parametrize("other", ["mean over the last axis only", "sum over all positions", "max"])
def test_other_reductions_over_positions_are_not_global_average_pooling(other):
    x = torch.randn(2, 2, 5, 5)
    torch.manual_seed(0)
    pooled = Pooled(2, nn.AdaptiveAvgPool2d(1), 1).eval()
    reduce, cells = {"mean over the last axis only": (lambda h: h.mean(-1), 4),
                     "sum over all positions": (lambda h: h.sum((2, 3)), 1),
                     "max": (lambda h: h.amax((2, 3)), 1)}[other]
    spelled = Pooled(2, Lambda(reduce), cells).eval()
    assert_not_isomorphic(gc.compile(pooled, (x,)), assert_oracles(spelled, (x,)))
