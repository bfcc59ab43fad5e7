"""GMN and EditGMN: output contracts, batching, gradients, the memory-efficient autograd path,
training sanity, and parameter editing that decompiles back into a runnable model."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch

import gmn_compiler as gc
from gmn_compiler.errors import DecompileError
from gmn_models import layers
from gmn_models.layers import GMNBlock
from gmn_models.model import GMN, EditGMN

TOL = 1e-10


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.f1, self.out = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.ln = nn.LayerNorm(6)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(torch.tanh(h + self.f1(self.ln(h))))


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))


def mlp(widths=(3, 5, 4, 2)) -> nn.Module:
    mods: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    models = {"mlp": (mlp(), (torch.randn(1, 3),)), "mlp2": (mlp((3, 7, 2)), (torch.randn(1, 3),)),
              "res": (Residual(), (torch.randn(1, 3),)), "shared": (Shared(), (torch.randn(1, 4),)),
              "cnn": (nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(3, 2)), (torch.randn(1, 2, 5, 5),))}
    return {k: (m, inp, gc.compile(m, inp)) for k, (m, inp) in models.items()}


def test_output_shapes_for_data_and_batch(compiled):
    d1, d2 = compiled["mlp"][2].data, compiled["cnn"][2].data
    model = GMN(hidden=16, num_blocks=2, graph_out=3, edge_out=2)
    assert model(d1).shape == (1, 3)
    batch = Batch.from_data_list([d1, d2, d1])
    assert model(batch).shape == (3, 3)
    assert model.edge_outputs(batch).shape == (batch.edge_index.shape[1], 2)
    g, e = model.graph_and_edge_outputs(batch)
    assert g.shape == (3, 3) and e.shape == (batch.edge_index.shape[1], 2)


def test_missing_heads_raise(compiled):
    d = compiled["mlp"][2].data
    with pytest.raises(RuntimeError, match="edge_out=0"):
        GMN(hidden=8, num_blocks=1).edge_outputs(d)
    with pytest.raises(RuntimeError, match="graph_out=0"):
        GMN(hidden=8, num_blocks=1, graph_out=0, edge_out=1)(d)
    with pytest.raises(ValueError, match="activation"):
        GMN(activation="tanh")


def test_batch_outputs_equal_per_graph_outputs(compiled):
    datas = [compiled[k][2].data for k in ("mlp", "cnn", "res", "mlp2")]
    model = GMN(hidden=16, num_blocks=3, graph_out=2, edge_out=2).double()
    batch = Batch.from_data_list(datas)
    g, e = model.graph_and_edge_outputs(batch)
    singles = [model.graph_and_edge_outputs(d) for d in datas]
    torch.testing.assert_close(g, torch.cat([s[0] for s in singles]), atol=TOL, rtol=0)
    torch.testing.assert_close(e, torch.cat([s[1] for s in singles]), atol=TOL, rtol=0)
    assert float((g[0] - g[1]).detach().abs().max()) > 1e-6  # different graphs, different outputs


def test_every_parameter_gets_a_gradient(compiled):
    batch = Batch.from_data_list([compiled["mlp"][2].data, compiled["cnn"][2].data])
    model = GMN(hidden=16, num_blocks=2, graph_out=2, edge_out=1)
    g, e = model.graph_and_edge_outputs(batch)
    (g.square().sum() + e.square().sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    # embedding rows of unused codes get zero grads, but every table gets some
    assert not missing, missing


def test_fused_path_matches_plain_autograd(compiled):
    batch = Batch.from_data_list([compiled["res"][2].data, compiled["cnn"][2].data])
    results = []
    for flag in (True, False):
        torch.manual_seed(3)
        model = GMN(hidden=8, num_blocks=2, graph_out=2, edge_out=1, fused=flag).double()
        g, e = model.graph_and_edge_outputs(batch)
        (g.sin().sum() + e.cos().sum()).backward()
        results.append([g.detach(), e.detach()] + [p.grad for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_fused_block_passes_gradcheck_and_repeated_backward(activation):
    g = torch.Generator().manual_seed(0)
    block = GMNBlock(4, activation=activation).double()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(generator=g)
    x = torch.randn(5, 4, dtype=torch.float64, generator=g).requires_grad_()
    e = torch.randn(9, 4, dtype=torch.float64, generator=g).requires_grad_()
    ei = torch.randint(0, 5, (2, 9), generator=g)
    params = list(block.parameters())
    assert torch.autograd.gradcheck(lambda x, e, *p: block(x, e, ei), (x, e, *params))
    xo, eo = block(x, e, ei)
    loss = xo.sin().sum() + eo.cos().sum()
    first = torch.autograd.grad(loss, [e] + params, retain_graph=True)
    second = torch.autograd.grad(loss, [e] + params)  # saved tensors were not overwritten
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_scratch_buffers_hold_no_state_between_steps(compiled):
    """Gradients do not depend on what the reused scratch buffers held before (a bigger batch,
    released buffers)."""
    small = compiled["mlp"][2].data
    big = Batch.from_data_list([compiled["cnn"][2].data] * 3)
    model = GMN(hidden=8, num_blocks=2).double()

    def grads(data):
        model.zero_grad()
        model(data).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    layers.release_scratch()
    fresh = grads(small)
    assert layers._SCRATCH.buffers  # the fused path used them
    grads(big)  # buffers grow and fill with other values
    for a, b in zip(fresh, grads(small)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    layers.release_scratch()
    assert not layers._SCRATCH.buffers


def test_block_is_directional():
    """Forward and backward messages use different weights: reversing every edge changes x'."""
    torch.manual_seed(0)
    block = GMNBlock(8).double()
    x, e = torch.randn(5, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    ei = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    x1, _ = block(x, e, ei)
    x2, _ = block(x, e, ei.flip(0))
    assert float((x1 - x2).detach().abs().max()) > 1e-6


def test_block_is_exactly_one_hop_local():
    """Changing edge k = (u -> v) changes e' at k only and x' at u and v only; changing node u
    changes e' on exactly the edges touching u (in or out) and x' at u and its neighbours."""
    torch.manual_seed(0)
    block = GMNBlock(8).double()
    ei = torch.tensor([[0, 1, 1, 2, 3, 5], [1, 2, 3, 4, 4, 0]])
    x, e = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    x0, e0 = block(x, e, ei)

    def changed(a, b):
        return set(torch.nonzero((a - b).detach().abs().amax(dim=1) > 1e-12).squeeze(1).tolist())

    e_k = e.clone()
    shift = torch.linspace(-1, 1, 8, dtype=torch.float64)  # not a constant: LayerNorm ignores those
    e_k[2] += shift  # edge 1 -> 3
    x1, e1 = block(x, e_k, ei)
    assert changed(e1, e0) == {2} and changed(x1, x0) == {1, 3}
    x_u = x.clone()
    x_u[1] += shift  # node 1: in-edge 0 (0 -> 1), out-edges 1 (1 -> 2) and 2 (1 -> 3)
    x2, e2 = block(x_u, e, ei)
    assert changed(e2, e0) == {0, 1, 2} and changed(x2, x0) == {0, 1, 2, 3}


def test_dropout_only_in_training(compiled):
    d = compiled["cnn"][2].data
    model = GMN(hidden=16, num_blocks=2, dropout=0.5).eval()
    torch.testing.assert_close(model(d), model(d), atol=0, rtol=0)
    model.train()
    assert not torch.equal(model(d), model(d))


def test_a_few_train_steps_fit_a_tiny_regression(compiled):
    datas = [compiled[k][2].data for k in ("mlp", "mlp2", "res", "cnn")]
    batch = Batch.from_data_list(datas)
    target = torch.tensor([[1.0], [-1.0], [0.5], [-0.5]])
    model = GMN(hidden=16, num_blocks=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.mse_loss(model(batch), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]


# ---------------------------------------------------------------- editing (theta + gamma * delta)

def test_edit_keeps_structural_edges_and_adds_gamma_delta(compiled):
    d = compiled["res"][2].data
    structural = d.edge_param < 0
    assert bool(structural.any()) and bool((~structural).any())
    edit = EditGMN(hidden=16, num_blocks=2, gamma_init=0.5).double()
    new = edit(d)
    old = d.edge_attr[:, 0].double()
    assert new.shape == (d.edge_index.shape[1],)
    assert torch.equal(new[structural], old[structural])
    delta = edit.delta(d)
    assert bool((delta[structural] == 0).all())
    torch.testing.assert_close(new, old + 0.5 * delta, atol=TOL, rtol=0)
    assert bool((new[~structural] != old[~structural]).all())
    new.sum().backward()
    assert edit.gamma.grad is not None and float(edit.gamma.grad.abs()) > 0


def test_edit_with_gamma_zero_is_the_identity(compiled):
    d = compiled["cnn"][2].data
    assert torch.equal(EditGMN(hidden=8, num_blocks=1, gamma_init=0.0)(d).detach(), d.edge_attr[:, 0])


def test_edited_mlp_decompiles_loads_and_runs(compiled):
    model, inputs, pg = compiled["mlp"]
    edit = EditGMN(hidden=16, num_blocks=2, gamma_init=0.1)
    with torch.no_grad():
        new = edit(pg.data)
    state = pg.to_state_dict(new)
    edited = copy.deepcopy(model)
    result = edited.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    before = dict(model.named_parameters())
    for name, p in edited.named_parameters():
        assert name in state
        assert not torch.equal(p, before[name]), f"{name} was not edited"
    # the value on each parameter edge landed on its parameter entry
    mask = pg.data.edge_param >= 0
    params = dict(edited.named_parameters())
    for i in torch.nonzero(mask).squeeze(1)[:: 7].tolist():
        name = pg.params[int(pg.data.edge_param[i])].name
        assert params[name].reshape(-1)[int(pg.data.edge_offset[i])] == new[i]
    out = edited(*inputs)
    assert out.shape == model(*inputs).shape and bool(torch.isfinite(out).all())
    assert not torch.allclose(out, model(*inputs))


def test_edit_averages_copies_of_a_shared_parameter(compiled):
    pg = compiled["shared"][2]
    d = pg.data
    key = d.edge_param * 10_000 + d.edge_offset
    param = d.edge_param >= 0
    assert key[param].unique().numel() < int(param.sum())  # the shared Linear has copies
    with torch.no_grad():
        averaged = EditGMN(hidden=8, num_blocks=2, gamma_init=0.1)(d)
        torch.manual_seed(0)
        raw = EditGMN(hidden=8, num_blocks=2, gamma_init=0.1, average_copies=False)(d)
    pg.to_state_dict(averaged)  # copies agree
    with pytest.raises(DecompileError):
        pg.to_state_dict(raw)


def test_edit_on_a_batch_equals_per_graph_edits(compiled):
    datas = [compiled[k][2].data for k in ("shared", "res", "mlp")]
    edit = EditGMN(hidden=8, num_blocks=2, gamma_init=0.3).double()
    batched = edit(Batch.from_data_list(datas))
    torch.testing.assert_close(batched, torch.cat([edit(d) for d in datas]), atol=TOL, rtol=0)


def test_edit_needs_edge_param(compiled):
    d = compiled["mlp"][2].data.clone()
    del d.edge_param
    with pytest.raises(ValueError, match="edge_param"):
        EditGMN(hidden=8, num_blocks=1)(d)
