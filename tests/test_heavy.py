"""Heavy tests: full-size models. Excluded from the default run; run with
``python -m pytest -q -m heavy`` (see README)."""

from __future__ import annotations

import pytest
import torch

import gmn_compiler as gc
from gmn_models.architectures import resnet

pytestmark = pytest.mark.heavy


def test_resnet50_compiles_and_round_trips_bit_exact():
    model = resnet("resnet50")
    pg = gc.compile(model, (torch.randn(1, 3, 224, 224),))
    d = pg.data
    params = sum(p.numel() for p in model.parameters())
    stats = sum(m.running_mean.numel() + m.running_var.numel()
                for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int((d.edge_param >= 0).sum()) == params + stats  # one edge per entry
    state = pg.to_state_dict(d.edge_attr[:, 0])
    reference = model.state_dict()
    for name, tensor in state.items():
        assert torch.equal(tensor, reference[name]), name
    assert set(state) == {k for k, v in reference.items() if v.is_floating_point()}


def test_resnet18_soundness_of_declared_symmetries_on_a_subgraph_free_check():
    """Edited values decompile into a model that runs, and permuting the channels of one
    hidden conv in the weights gives a graph with the same structure (checked cheaply on
    degree sequences, since VF2 on 11.7M edges is out of reach)."""
    model = resnet("resnet18")
    x = torch.randn(1, 3, 64, 64)
    pg = gc.compile(model, (x,))
    edited = pg.to_state_dict(pg.data.edge_attr[:, 0] * 1.01)
    clone = resnet("resnet18")
    clone.load_state_dict(edited, strict=False)
    with torch.no_grad():
        assert torch.isfinite(clone(x)).all()
    perm = torch.randperm(64)
    with torch.no_grad():
        layer = clone.layer1[0]
        clone.load_state_dict(model.state_dict())
        layer.conv1.weight.copy_(layer.conv1.weight[perm])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(layer.bn1, name).copy_(getattr(layer.bn1, name)[perm])
        layer.conv2.weight.copy_(layer.conv2.weight[:, perm])
        torch.testing.assert_close(clone(x), model(x), rtol=1e-4, atol=1e-4)
    permuted = gc.compile(clone, (x,))
    assert torch.equal(permuted.data.edge_attr[:, 0].sort().values, pg.data.edge_attr[:, 0].sort().values)
    degree = lambda g: torch.bincount(g.data.edge_index[1], minlength=g.data.num_nodes).sort().values
    assert torch.equal(degree(permuted), degree(pg))
