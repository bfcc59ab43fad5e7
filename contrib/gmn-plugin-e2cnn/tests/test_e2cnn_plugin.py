"""The e2cnn plugin, installed as its own distribution and found through its entry point."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical, schema
from gmn_compiler.errors import CompileError, LoweringError
from gmn_compiler.registry import load_registry
from gmn_compiler.testing import assert_oracles

from e2cnn import gspaces
from e2cnn import nn as enn
from gmn_plugin_e2cnn import R2CONV

warnings.filterwarnings("ignore", message="indexing with dtype torch.uint8")

KEEP = ("bias_expansion",)  # e2cnn's fixed bias layout: not drawn at random by the oracles
GSPACE = gspaces.Rot2dOnR2(N=4)


def field_type(trivial: int, regular: int):
    return enn.FieldType(GSPACE, trivial * [GSPACE.trivial_repr] + regular * [GSPACE.regular_repr])


class SteerableNet(nn.Module):
    """Two R2Convs over mixed field types (trivial and regular), then a plain head."""

    def __init__(self, sigma: float | None = None, padding: int = 1, stride: int = 1):
        super().__init__()
        kw = {"padding": padding, "stride": stride} | ({} if sigma is None else {"sigma": sigma})
        t_in, t_hid, t_out = field_type(2, 0), field_type(1, 3), field_type(0, 2)
        self.block = enn.SequentialModule(enn.R2Conv(t_in, t_hid, 3, **kw), enn.ReLU(t_hid),
                                          enn.R2Conv(t_hid, t_out, 3, **kw), enn.ReLU(t_out))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(t_out.size, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the input type is read off the first layer (not a global), so deep copies trace too
        return self.head(self.block(enn.GeometricTensor(x, self.block.in_type)).tensor)


X = (torch.randn(1, 2, 7, 7, generator=torch.Generator().manual_seed(0)),)


def convs(net: SteerableNet) -> list:
    return [m for m in net.modules() if isinstance(m, enn.R2Conv)]


def _count(pg, etype: str) -> int:
    return int((pg.data.edge_attr[:, schema.edge_column("type")] == pg.vocabulary.code("edge_types", etype)).sum())


def test_found_through_the_entry_point_and_listed(capsys):
    registry = load_registry()
    assert R2CONV in registry.leaf_modules and registry.leaf_modules[R2CONV].plugin.endswith("e2cnn")
    assert gc.cli.main(["--list-rules"]) == 0
    assert "e2cnn_r2conv" in capsys.readouterr().out


def test_one_edge_per_free_parameter():
    torch.manual_seed(0)
    net = SteerableNet()
    pg = gc.compile(net, X)
    c1, c2 = convs(net)
    assert _count(pg, "e2cnn_r2conv") == c1.weights.numel() + c2.weights.numel()
    assert _count(pg, "e2cnn_r2conv_bias") == c1.bias.numel() + c2.bias.numel()
    state = pg.to_state_dict(pg.data.edge_attr[:, 0])
    assert torch.equal(state["block.0.weights"], c1.weights) and "block.0.filter" not in state


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_oracle(mode):
    torch.manual_seed(0)
    with torch.no_grad():  # e2cnn's eval() caches the filter; under no_grad it stays deep-copyable
        net = getattr(SteerableNet(), mode)()
    assert_oracles(net, X, keep=KEEP)


def test_an_edited_graph_decompiles_into_an_equivariant_block():
    torch.manual_seed(0)
    net = SteerableNet()
    pg = gc.compile(net, X)
    values = pg.data.edge_attr[:, 0].clone()
    edit = pg.data.edge_param >= 0
    values[edit] += torch.randn(int(edit.sum()), generator=torch.Generator().manual_seed(1))
    net.load_state_dict(pg.to_state_dict(values), strict=False)
    with torch.no_grad():
        net.train()
        net.eval()  # rebuild the cached filters from the edited weights
    x = enn.GeometricTensor(torch.randn(2, 2, 9, 9), net.block.in_type)
    with torch.no_grad():
        for g in GSPACE.testing_elements:
            turned = net.block(x.transform(g)).tensor
            torch.testing.assert_close(turned, net.block(x).transform(g).tensor, rtol=1e-4, atol=1e-4)


def test_a_different_basis_gives_a_different_graph():
    torch.manual_seed(0)
    a = SteerableNet()
    torch.manual_seed(0)
    b = SteerableNet(sigma=0.9)
    assert not canonical.isomorphic(gc.compile(a, X), gc.compile(b, X))


@pytest.mark.parametrize("window", [{"stride": 2}, {"padding": 0}], ids=["stride", "padding"])
def test_layers_differing_only_in_their_window_give_different_graphs(window):
    """Same field types, same basis, same weights: only the stride (or padding) differs."""
    torch.manual_seed(0)
    a = SteerableNet()
    torch.manual_seed(0)
    b = SteerableNet(**window)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    x = torch.randn(2, 2, 9, 9)
    assert a(x).shape == b(x).shape and not torch.allclose(a(x), b(x))
    ga, gb = gc.compile(a, X), gc.compile(b, X)
    assert ga.data.num_nodes == gb.data.num_nodes and ga.data.edge_index.shape == gb.data.edge_index.shape
    assert not canonical.isomorphic(ga, gb)


def test_an_exported_program_is_refused_clearly():
    ep = torch.export.export(SteerableNet().eval(), X, strict=True)
    with pytest.raises(LoweringError, match="compile the nn.Module itself"):
        gc.compile(ep)


def test_a_field_spanning_several_input_channels_is_refused():
    vector = enn.FieldType(GSPACE, [GSPACE.irrep(1)])  # one 2-dimensional field

    class VectorInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = enn.R2Conv(vector, field_type(0, 2), 3)

        def forward(self, x):
            return self.conv(enn.GeometricTensor(x, self.conv.in_type)).tensor

    with pytest.raises((LoweringError, CompileError), match="field 0"):
        gc.compile(VectorInput(), X)
