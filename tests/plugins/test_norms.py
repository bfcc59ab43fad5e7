"""plugins/norms.py: batch norm, layer norm, group norm, instance norm.

Oracles on every variant (affine or not, running statistics), channel permutations written by
hand through the norm's parameters and buffers, and controls that are not symmetries (a norm
parameter permuted alone, a channel swapped across GroupNorm groups). The soundness oracle is
shown to have teeth: a group_norm rule without group nodes is caught.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import model_runs, symmetry
from gmn_compiler.registry import load_registry
from oracles import (assert_isomorphic, assert_not_isomorphic, assert_oracles, assert_round_trip,
                     assert_same_function, functions_differ, permute_cols, permute_norm,
                     permute_rows, permuted_copy, randomize_buffers)

S = gc.schema
ROLE, ACT = S.node_column("role"), S.node_column("activation")
ETYPE, SPATIAL = S.edge_column("type"), S.edge_column("spatial")


def _role(name):
    return S.code(S.NODE_ROLES, name)


def _etype(name):
    return S.code(S.EDGE_TYPES, name)


class Sandwich(nn.Module):
    """layer(in -> 4) -> norm -> relu -> layer(4 -> 2), conv or linear."""

    def __init__(self, norm: nn.Module, conv_dims: int | None = 2, c_in: int = 3):
        super().__init__()
        if conv_dims is None:
            self.a, self.b = nn.Linear(c_in, 4), nn.Linear(4, 2)
        else:
            conv = {1: nn.Conv1d, 2: nn.Conv2d}[conv_dims]
            self.a, self.b = conv(c_in, 4, 3), conv(4, 2, 1)
        self.norm = norm

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


X2D = (2, 3, 5, 5)  # conv 3x3 -> [2, 4, 3, 3]
X1D = (2, 3, 7)
XLIN = (3, 3)

CASES = {
    "batchnorm2d": (lambda: nn.BatchNorm2d(4), 2, X2D),
    "batchnorm2d-no-affine": (lambda: nn.BatchNorm2d(4, affine=False), 2, X2D),
    "batchnorm1d-features": (lambda: nn.BatchNorm1d(4), None, XLIN),
    "batchnorm1d-sequence": (lambda: nn.BatchNorm1d(4), 1, X1D),
    "layernorm-features": (lambda: nn.LayerNorm(4), None, XLIN),
    "layernorm-features-no-affine": (lambda: nn.LayerNorm(4, elementwise_affine=False), None, XLIN),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), 2, X2D),
    "groupnorm-no-affine": (lambda: nn.GroupNorm(2, 4, affine=False), 2, X2D),
    "instancenorm2d": (lambda: nn.InstanceNorm2d(4), 2, X2D),
    "instancenorm2d-affine": (lambda: nn.InstanceNorm2d(4, affine=True), 2, X2D),
    "instancenorm2d-running-stats": (lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True), 2, X2D),
    "instancenorm1d-affine": (lambda: nn.InstanceNorm1d(4, affine=True), 1, X1D),
}


def _make(case):
    make_norm, dims, shape = CASES[case]
    model = randomize_buffers(Sandwich(make_norm(), dims)).eval()
    return model, (torch.randn(*shape),)


@pytest.mark.parametrize("case", sorted(CASES))
def test_norm_oracles_and_channel_permutation(case):
    model, inputs = _make(case)
    pg = assert_oracles(model, inputs, trials=3)
    # every parameter and buffer entry (running statistics included, num_batches_tracked
    # excluded) is exactly one edge
    n_tensors = sum(t.numel() for k, t in model.state_dict().items() if "num_batches" not in k)
    assert int((pg.data.edge_param >= 0).sum()) == n_tensors
    n_represented = sum(t.numel() for t in pg.to_state_dict(pg.data.edge_attr[:, 0]).values())
    assert n_represented == n_tensors
    n_groups = model.norm.num_groups if isinstance(model.norm, nn.GroupNorm) else 0
    members = int((pg.data.edge_attr[:, ETYPE] == _etype("gn_member")).sum())
    assert members == (4 if n_groups else 0)

    p = torch.tensor([1, 0, 3, 2]) if n_groups else torch.tensor([2, 0, 3, 1])
    permuted = permuted_copy(model, lambda m: (permute_rows(m.a, p), permute_norm(m.norm, p),
                                               permute_cols(m.b, p)))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if "no-affine" not in c
                                  and c not in ("instancenorm2d",)])
def test_norm_parameters_permuted_alone_is_not_a_symmetry(case):
    model, inputs = _make(case)
    pg = gc.compile(model, inputs)
    p = torch.tensor([1, 2, 3, 0])
    alone = permuted_copy(model, lambda m: m.norm.weight.copy_(m.norm.weight[p]))
    assert functions_differ(model, alone, inputs)
    assert_not_isomorphic(pg, gc.compile(alone, inputs))


def test_batch_norm_running_statistics_are_represented():
    model, inputs = _make("batchnorm2d")
    pg = assert_round_trip(model, inputs)
    kinds = {p.name: p.kind for p in pg.params}
    assert kinds["norm.running_mean"] == "buffer" and kinds["norm.running_var"] == "buffer"
    assert "norm.num_batches_tracked" not in kinds
    roles = pg.data.x[:, ROLE].long()
    types = pg.data.edge_attr[:, ETYPE].long()
    for role, etype in (("norm_weight", "bn_weight"), ("norm_bias", "bn_bias"),
                        ("running_mean", "bn_mean"), ("running_var", "bn_var")):
        assert int((roles == _role(role)).sum()) == 1
        assert int((types == _etype(etype)).sum()) == 4
    # the running mean alone, permuted: a different function and a different graph
    p = torch.tensor([3, 2, 1, 0])
    moved = permuted_copy(model, lambda m: m.norm.running_mean.copy_(m.norm.running_mean[p]))
    assert functions_differ(model, moved, inputs)
    assert_not_isomorphic(pg, gc.compile(moved, inputs))


def test_layer_norm_records_the_normalisation_on_nodes():
    model, inputs = _make("layernorm-features")
    pg = gc.compile(model, inputs)
    acts = pg.data.x[:, ACT].long()
    assert int((acts == S.code(S.ACTIVATIONS, "layer_norm")).sum()) == 4
    # a parameter-free layer norm still shows: without it (same weights) the graph differs
    normed = nn.Sequential(model.a, nn.LayerNorm(4, elementwise_affine=False), nn.ReLU(), model.b).eval()
    plain = nn.Sequential(model.a, nn.ReLU(), model.b).eval()
    assert_not_isomorphic(gc.compile(normed, inputs), gc.compile(plain, inputs))


class ChwLayerNorm(nn.Module):
    """LayerNorm over (C, H, W) of a conv feature map."""

    def __init__(self, affine=True):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3)
        self.norm = nn.LayerNorm((3, 3, 3), elementwise_affine=affine)
        self.b = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
def test_layer_norm_over_channels_and_space(affine):
    model = randomize_buffers(ChwLayerNorm(affine)).eval()
    inputs = (torch.randn(2, 2, 5, 5),)
    pg = assert_oracles(model, inputs, trials=3)
    p = torch.tensor([2, 0, 1])

    def channels(m):
        permute_rows(m.a, p)
        if affine:
            m.norm.weight.copy_(m.norm.weight[p])
            m.norm.bias.copy_(m.norm.bias[p])
        permute_cols(m.b, p)
    permuted = permuted_copy(model, channels)
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))
    if not affine:
        return
    d = pg.data
    sel = d.edge_attr[:, ETYPE] == _etype("ln_weight")
    assert int(sel.sum()) == 27
    # each ln_weight edge records the (h, w) position of its entry
    assert torch.equal(d.edge_attr[sel, SPATIAL].long(), d.edge_offset[sel] % 9)
    # the weight's spatial layout matters: flipping it along W is not a symmetry
    flipped = permuted_copy(model, lambda m: m.norm.weight.copy_(m.norm.weight.flip(-1)))
    assert functions_differ(model, flipped, inputs)
    assert_not_isomorphic(pg, gc.compile(flipped, inputs))


class GroupNormNet(nn.Module):
    """conv(2 -> 6) -> GroupNorm(3 groups of 2) -> relu -> 1x1 conv(6 -> 2)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 6, 3)
        self.norm = nn.GroupNorm(3, 6)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


def _gn_model():
    return randomize_buffers(GroupNormNet()).eval(), (torch.randn(2, 2, 5, 5),)


def test_group_norm_group_nodes():
    model, inputs = _gn_model()
    pg = assert_oracles(model, inputs, trials=3)
    d = pg.data
    groups = torch.nonzero(d.x[:, ROLE].long() == _role("group")).view(-1)
    assert groups.numel() == 3
    member = d.edge_attr[:, ETYPE] == _etype("gn_member")
    assert int(member.sum()) == 6
    assert set(d.edge_index[0, member].tolist()) == set(groups.tolist())
    # each group node reaches 2 channels, and those are a's channels (2k, 2k + 1)
    names = [p.name for p in pg.params]
    bias_edges = d.edge_param == names.index("a.bias")
    channel_of = dict(zip(d.edge_index[1, bias_edges].tolist(), d.edge_offset[bias_edges].tolist()))
    for g in groups.tolist():
        members = d.edge_index[1, member & (d.edge_index[0] == g)].tolist()
        assert len(members) == 2
        assert len({channel_of[c] // 2 for c in members}) == 1


def test_group_norm_permutations():
    model, inputs = _gn_model()
    pg = gc.compile(model, inputs)

    def apply(p):
        return permuted_copy(model, lambda m: (permute_rows(m.a, p), permute_norm(m.norm, p),
                                               permute_cols(m.b, p)))
    for p in (torch.tensor([1, 0, 2, 3, 5, 4]),  # within groups
              torch.tensor([4, 5, 0, 1, 2, 3])):  # whole groups
        permuted = apply(p)
        assert_same_function(model, permuted, inputs)
        assert_isomorphic(pg, gc.compile(permuted, inputs))
    crossed = apply(torch.tensor([2, 1, 0, 3, 4, 5]))  # channel 0 (group 0) <-> 2 (group 1)
    assert functions_differ(model, crossed, inputs)
    assert_not_isomorphic(pg, gc.compile(crossed, inputs))


def test_group_norm_refines_the_declared_conv_symmetry():
    model, inputs = _gn_model()
    pg = gc.compile(model, inputs)
    declared = [s for s in pg.symmetries if "a (Conv2d)" in s["what"]]
    assert len(declared) == 1
    assert declared[0]["groups"] == 3 and declared[0]["permute_groups"]


# ---------------------------------------------------------------- the oracle has teeth
def _group_norm_without_groups(ctx, op):
    """A WRONG rule: group norm lowered like a per-channel affine map, no group nodes."""
    x, weight, bias = op.inputs[0], op.inputs[1], op.inputs[2]
    layout = ctx.derive(x, "group_norm")
    for ref, etype, role in ((weight, "gn_weight", "norm_weight"), (bias, "gn_bias", "norm_bias")):
        ctx.attach_param(layout, x.shape, ref.apply(lambda t: t.view(1, -1, 1, 1)), etype, role)
    ctx.set_layout(op.outputs[0], layout)
    for extra in op.outputs[1:]:
        ctx.set_layout(extra, None)


class _WrongGroupNorm:
    @gc.hookimpl
    def gmn_register(self, registry):
        registry.add_rule("group_norm", _group_norm_without_groups, override=True)


def _wrong_registry():
    return load_registry([_WrongGroupNorm()], entry_points=False)


def test_wrong_group_norm_rule_round_trips_but_is_unsound():
    model, inputs = _gn_model()
    registry = _wrong_registry()
    assert registry.rules["group_norm"].plugin == "_WrongGroupNorm"
    pg = assert_round_trip(model, inputs, registry=registry)
    assert int((pg.data.x[:, ROLE].long() == _role("group")).sum()) == 0
    with pytest.raises(gc.SymmetryError, match="not function-preserving"):
        gc.check_symmetry(model, inputs, trials=8, graph=pg, completeness=False)


def _cross_group_constraint(pg):
    channels = [s for s in pg.symmetries if "a (Conv2d)" in s["what"]][0]["nodes"].tolist()
    # channel 0 (group 0) <-> channel 2 (group 1), their group mates 1 and 3 fixed
    return {channels[0]: channels[2], channels[2]: channels[0], channels[1]: channels[1],
            channels[3]: channels[3]}


def test_cross_group_automorphism_of_wrong_rule_changes_the_function():
    model, inputs = _gn_model()
    pg = gc.compile(model, inputs, registry=_wrong_registry())
    rng = torch.Generator().manual_seed(0)
    mapping = symmetry.find_automorphism(symmetry.structure_graph(pg), rng,
                                         constraint=_cross_group_constraint(pg))
    assert mapping is not None
    values = symmetry.move_edge_values(pg, mapping, rng)
    reference = model_runs.outputs_with_values(model, pg, pg.data.edge_attr[:, 0], inputs)
    moved = model_runs.outputs_with_values(model, pg, values, inputs)
    assert not torch.allclose(reference[0], moved[0])


def test_correct_rule_has_no_cross_group_automorphism():
    model, inputs = _gn_model()
    pg = gc.compile(model, inputs)
    rng = torch.Generator().manual_seed(0)
    mapping = symmetry.find_automorphism(symmetry.structure_graph(pg), rng,
                                         constraint=_cross_group_constraint(pg))
    assert mapping is None


def test_batch_norm_without_running_statistics_is_rejected():
    """Without running statistics the layer normalises with batch statistics (a function of
    the whole batch); the rule must refuse it rather than encode an affine map."""
    model = Sandwich(nn.BatchNorm2d(4, track_running_stats=False), 2).eval()
    with pytest.raises(gc.CompileError, match="running statistics"):
        gc.compile(model, (torch.randn(*X2D),))


class GroupedConvGroupNorm(nn.Module):
    """ResNeXt-style: grouped conv (2 groups) followed by a GroupNorm whose number of groups
    need not match."""

    def __init__(self, norm_groups):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, groups=2)
        self.norm = nn.GroupNorm(norm_groups, 4)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


@pytest.mark.parametrize("norm_groups", [2, 1, 4])
def test_group_norm_after_grouped_conv(norm_groups):
    model = randomize_buffers(GroupedConvGroupNorm(norm_groups)).eval()
    inputs = (torch.randn(2, 2, 5, 5),)
    pg = assert_oracles(model, inputs, trials=3)
    # the completeness oracle draws one random permutation per declared symmetry: draw several
    # (the conv groups read different pinned input channels, so they cannot be swapped whole)
    for seed in range(1, 5):
        gc.check_symmetry(model, inputs, trials=1, seed=seed, graph=pg)
    # swapping two channels of one conv group (with everything that follows them) is a
    # symmetry whatever the GroupNorm's groups (2: same group; 1: one group; 4: whole groups)
    def apply(p):
        return permuted_copy(model, lambda m: (permute_rows(m.a, p), permute_norm(m.norm, p),
                                               permute_cols(m.b, p)))
    permuted = apply(torch.tensor([1, 0, 2, 3]))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))
    # across conv groups it is not: each conv group reads its own (pinned) input channel
    crossed = apply(torch.tensor([2, 1, 0, 3]))
    assert functions_differ(model, crossed, inputs)
    assert_not_isomorphic(pg, gc.compile(crossed, inputs))


def test_instance_norm_over_an_axis_of_units_is_refused():
    """Normalising over an axis that carries neurons would mix units the graph does not show
    mixed (a group norm written out in a way the compiler does not recognise): refused."""
    import torch.nn.functional as F

    from gmn_compiler.errors import CompileError

    class Written(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.o = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            return self.o(F.instance_norm(h.view(x.shape[0], 2, 3).transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], 6))

    with pytest.raises(CompileError, match="instance norm over an axis that carries neurons"):
        gc.compile(Written(), (torch.randn(3, 4),))
