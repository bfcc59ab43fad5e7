"""Permutation specs (gmn_compiler.permutations) and weight matching (gmn_compiler.alignment,
``gmn-align``): the permutations are exact symmetries, a permuted copy is recovered bit for
bit, two independently trained nets get a lower interpolation barrier."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import align_cli
from gmn_compiler.frontends.torch_export import load_pt2
from gmn_compiler.permutations import permute_values


def _mlp(widths=(5, 8, 7, 3)) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


class _GroupedCNN(nn.Module):
    """BatchNorm, a grouped conv, a depthwise conv, GroupNorm."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gn, self.head = nn.GroupNorm(2, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(self.depthwise(torch.relu(self.grouped(h))))
        return self.head(self.gn(h).mean((2, 3)))


class _Block(nn.Module):
    """A pre-norm transformer block: two attention heads, an MLP, residual adds."""

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc1, self.fc2, self.out = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.ln(x)
        x = x + self.att(h, h, h, need_weights=False)[0]
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.out(x)


class _InvertedResidual(nn.Module):
    """MobileNetV2's block: pointwise expansion, depthwise conv, pointwise projection, a
    residual add tying the projection's channels to the stem's."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.expand, self.bn1 = nn.Conv2d(4, 12, 1), nn.BatchNorm2d(12)
        self.depthwise, self.bn2 = nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12)
        self.project, self.head = nn.Conv2d(12, 4, 1), nn.Linear(4, 3)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.project(torch.relu(self.bn2(self.depthwise(torch.relu(self.bn1(self.expand(h)))))))
        return self.head(h.mean((2, 3)))


class _LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.out = nn.LSTM(4, 6, batch_first=True), nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.lstm(x)[0])


def _generic(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with every floating parameter and buffer drawn at random (distinct entries;
    running variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=gen))
    return model.eval()


CASES = {
    "mlp": (lambda: _mlp(), lambda: (torch.randn(4, 5),)),
    "grouped_cnn": (_GroupedCNN, lambda: (torch.randn(2, 3, 6, 6),)),
    "transformer_block": (_Block, lambda: (torch.randn(2, 5, 8),)),
    "lstm": (_LSTMNet, lambda: (torch.randn(2, 5, 4),)),
    "inverted_residual": (_InvertedResidual, lambda: (torch.randn(2, 3, 5, 5),)),
}


def _shuffled(spec, gen: torch.Generator) -> torch.Tensor:
    """Values of the spec's graph moved by a random element of every group (whole blocks
    rotated where they may move, so that heads really are exchanged)."""
    values = spec.graph.edge_values()
    for group in spec.groups:
        block_perm = torch.roll(torch.arange(group.blocks), 1) if group.permute_blocks else None
        unit_perms = torch.stack([torch.randperm(group.block_size, generator=gen) for _ in range(group.blocks)])
        values = permute_values(spec.graph, group.node_permutation(spec.graph.num_nodes, block_perm, unit_perms),
                                values)
    return values


def test_spec_of_an_mlp_names_each_hidden_layer_and_the_axes_it_permutes():
    model = _mlp()
    spec = gc.permutation_spec(model, (torch.randn(2, 5),))
    assert [(g.blocks, g.block_size) for g in spec.groups] == [(1, 8), (1, 7)]
    axes = spec.axes()
    (group, unit), = axes["0.weight"][0]
    assert group == 0 and torch.equal(unit.view(-1), torch.arange(8))
    assert axes["0.weight"][1] == [] and axes["4.weight"][0] == []
    assert [g for g, _ in axes["2.weight"][0]] == [1] and [g for g, _ in axes["2.weight"][1]] == [0]


def test_spec_of_attention_exchanges_heads_and_dims_within_heads():
    spec = gc.permutation_spec(_Block().eval(), (torch.randn(2, 5, 8),))
    heads = [g for g in spec.groups if g.permute_blocks]
    assert len(heads) == 1 and heads[0].blocks == 2
    assert heads[0].block_units.shape[1] > 0  # a head's query/key and value dims move with it
    within = [g for g in spec.groups if "within each head" in g.what]
    assert [(g.blocks, g.block_size) for g in within] == [(2, 4), (2, 4)]


def test_spec_of_an_inverted_residual_moves_tied_channels_together():
    """The residual stream (stem and projection channels, tied by the add) is one group whose
    units carry both; the expanded channels carry their depthwise copies."""
    spec = gc.permutation_spec(_InvertedResidual().eval(), (torch.randn(2, 3, 5, 5),))
    sizes = sorted((g.block_size, g.units.shape[2]) for g in spec.groups)
    assert sizes == [(4, 3), (12, 2)], sizes
    axes = spec.axes()
    assert [len(axes["project.weight"][a]) for a in range(2)] == [1, 1]
    # a depthwise filter moves with its channel: axis 0 indexes both its input and output node
    assert len(axes["depthwise.weight"][0]) == 2 and len({g for g, _ in axes["depthwise.weight"][0]}) == 1


def test_spec_of_a_grouped_conv_keeps_its_groups_apart():
    spec = gc.permutation_spec(_GroupedCNN().eval(), (torch.randn(2, 3, 6, 6),))
    stem = [g for g in spec.groups if "stem" in g.what]
    assert len(stem) == 1 and (stem[0].blocks, stem[0].block_size) == (4, 2) and not stem[0].permute_blocks
    # the grouped conv's input axis: each output group reads its own input channels
    (_, unit), = spec.axes()["grouped.weight"][1]
    assert unit.shape[0] == 8 and len(torch.unique(unit)) == 8


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_permuted_copy_computes_the_same_and_is_recovered_bit_for_bit(name):
    make, inputs = CASES[name]
    model, x = _generic(make()), inputs()
    spec = gc.permutation_spec(model, x)
    assert spec.groups
    shuffled = _shuffled(spec, torch.Generator().manual_seed(1))
    assert not torch.equal(shuffled, spec.graph.edge_values())
    other = copy.deepcopy(model)
    spec.graph.write_into(other, shuffled)
    torch.testing.assert_close(other(*x), model(*x), rtol=1e-5, atol=1e-5)
    values, perm = gc.weight_matching(spec.graph, gc.compile(other, x), spec=spec)
    assert not torch.equal(perm, torch.arange(perm.numel()))
    aligned = spec.graph.to_state_dict(values)
    for key, tensor in aligned.items():
        assert torch.equal(tensor, model.state_dict()[key]), key


def test_a_hand_permuted_mlp_is_recovered():
    a, x = _generic(_mlp()), (torch.randn(3, 5),)
    b = copy.deepcopy(a)
    p1, p2 = torch.randperm(8), torch.randperm(7)
    with torch.no_grad():
        b[0].weight.copy_(a[0].weight[p1])
        b[0].bias.copy_(a[0].bias[p1])
        b[2].weight.copy_(a[2].weight[p2][:, p1])
        b[2].bias.copy_(a[2].bias[p2])
        b[4].weight.copy_(a[4].weight[:, p2])
    values, _ = gc.weight_matching(gc.compile(a, x), gc.compile(b, x))
    aligned = gc.compile(b, x).to_state_dict(values)
    assert all(torch.equal(aligned[k], a.state_dict()[k]) for k in aligned)


def _digits():
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    return torch.tensor(features / 16.0, dtype=torch.float32), torch.tensor(labels)


def _trained_mlp(seed: int, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(seed)
    model = _mlp((64, 32, 32, 10)).train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _barrier(a: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest excess of the loss on the straight line from ``a`` to ``b`` over the line
    between the end losses (11 points)."""
    model = _mlp((64, 32, 32, 10))
    losses = []
    ts = torch.linspace(0, 1, 11).tolist()
    for t in ts:
        model.load_state_dict({k: (1 - t) * a[k] + t * b[k] for k in a})
        with torch.no_grad():
            losses.append(float(nn.functional.cross_entropy(model(x), y)))
    return max(loss - ((1 - t) * losses[0] + t * losses[-1]) for loss, t in zip(losses, ts))


def test_weight_matching_lowers_the_barrier_between_independently_trained_nets():
    x, y = _digits()
    a, b = _trained_mlp(0, x, y), _trained_mlp(1, x, y)
    pa, pb = gc.compile(a, (x[:2],)), gc.compile(b, (x[:2],))
    values, _ = gc.weight_matching(pa, pb)
    aligned = pb.to_state_dict(values)
    b_aligned = copy.deepcopy(b)
    b_aligned.load_state_dict(aligned)
    torch.testing.assert_close(b_aligned(x), b(x), rtol=1e-4, atol=1e-4)  # same function
    before, after = _barrier(a.state_dict(), b.state_dict(), x, y), _barrier(a.state_dict(), aligned, x, y)
    assert before > 0.2 and after < 0.5 * before, (before, after)


def test_models_of_different_architectures_are_refused():
    x = (torch.randn(2, 5),)
    with pytest.raises(gc.CompileError, match="same architecture"):
        gc.weight_matching(gc.compile(_mlp(), x), gc.compile(_mlp((5, 9, 7, 3)), x))


# ---------------------------------------------------------------- gmn-align
def _save_pt2(model: nn.Module, x: tuple, path) -> str:
    torch.export.save(torch.export.export(model, x), str(path))
    return str(path)


def test_gmn_align_writes_b_aligned_onto_a_as_pt2(tmp_path, capsys):
    a, x = _generic(_mlp()), (torch.randn(3, 5),)
    spec = gc.permutation_spec(a, x)
    b = copy.deepcopy(a)
    spec.graph.write_into(b, _shuffled(spec, torch.Generator().manual_seed(2)))
    out = tmp_path / "b_aligned.pt2"
    code = align_cli.main([_save_pt2(a, x, tmp_path / "a.pt2"), _save_pt2(b, x, tmp_path / "b.pt2"), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    program = load_pt2(out)
    for key, tensor in a.state_dict().items():
        assert torch.equal(program.state_dict[key], tensor), key
    torch.testing.assert_close(program.module()(*x), b(*x), rtol=1e-5, atol=1e-5)


def test_gmn_align_writes_onnx(tmp_path):
    import onnxruntime as ort

    a, x = _generic(_mlp()), (torch.randn(3, 5),)
    spec = gc.permutation_spec(a, x)
    b = copy.deepcopy(a)
    spec.graph.write_into(b, _shuffled(spec, torch.Generator().manual_seed(3)))
    paths = []
    for name, model in (("a", a), ("b", b)):
        paths.append(str(tmp_path / f"{name}.onnx"))
        torch.onnx.export(model, x, paths[-1], input_names=["x"], dynamo=False)
    out = str(tmp_path / "b_aligned.onnx")
    assert align_cli.main([*paths, "-o", out]) == 0
    got = ort.InferenceSession(out).run(None, {"x": x[0].numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), b(*x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args, code, message", [
    (["a.pt2", "b.onnx", "-o", "c.pt2"], 2, "same suffix"),
    (["a.pt2", "b.pt2", "-o", "c.txt"], 2, "expected a .pt2 or .onnx file"),
    (["missing.pt2", "b.pt2", "-o", "c.pt2"], 1, "no such file"),
])
def test_gmn_align_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    x = (torch.randn(3, 5),)
    _save_pt2(_mlp(), x, tmp_path / "b.pt2")
    _save_pt2(_mlp(), x, tmp_path / "a.pt2") if args[0] == "a.pt2" else None
    assert align_cli.main(args) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("gmn-align: error:") and message in err and "\n" not in err
    assert not (tmp_path / args[-1]).exists()


def test_gmn_align_refuses_two_architectures_without_output(tmp_path, capsys):
    x = (torch.randn(3, 5),)
    a = _save_pt2(_mlp(), x, tmp_path / "a.pt2")
    b = _save_pt2(_mlp((5, 9, 7, 3)), x, tmp_path / "b.pt2")
    assert align_cli.main([a, b, "-o", str(tmp_path / "out.pt2")]) == 1
    assert "same architecture" in capsys.readouterr().err
    assert not (tmp_path / "out.pt2").exists()


ZOO = {  # the accuracy-prediction zoo's six families (gmn_models.zoo.families), small
    "mlp": ("mlp", dict(width=6), (2, 64)),
    "cnn2d_groupnorm": ("cnn2d", dict(norm="group"), (2, 1, 8, 8)),
    "cnn1d": ("cnn1d", {}, (2, 1, 40)),
    "resnet": ("resnet", {}, (2, 1, 8, 8)),
    "deepsets": ("deepsets", dict(width=6), (2, 64, 1)),
    "vit": ("vit", dict(in_shape=[1, 8, 8]), (2, 1, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_families_permuted_copies_are_recovered(name):
    from gmn_models.zoo import families

    builder, kwargs, shape = ZOO[name]
    model, x = _generic(getattr(families, builder)(**kwargs)), (torch.randn(*shape),)
    spec = gc.permutation_spec(model, x)
    other = copy.deepcopy(model)
    spec.graph.write_into(other, _shuffled(spec, torch.Generator().manual_seed(4)))
    torch.testing.assert_close(other(*x), model(*x), rtol=1e-4, atol=1e-4)
    values, _ = gc.weight_matching(spec.graph, gc.compile(other, x), spec=spec)
    aligned = spec.graph.to_state_dict(values)
    assert all(torch.equal(tensor, model.state_dict()[key]) for key, tensor in aligned.items())
