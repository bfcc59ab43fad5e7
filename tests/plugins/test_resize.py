"""Resampling (``F.interpolate``, ``nn.Upsample``; ONNX ``Resize`` in tests/test_onnx_ops.py):
UNet-style models pass every oracle in every mode, the mode and its parameters tell graphs
apart, and resampling an axis that carries neurons is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.testing import assert_oracles

MODES = {
    "nearest": dict(scale_factor=2, mode="nearest"),
    "nearest-exact": dict(scale_factor=2, mode="nearest-exact"),
    "bilinear": dict(scale_factor=2, mode="bilinear"),
    "bilinear-aligned": dict(size=(6, 6), mode="bilinear", align_corners=True),
    "bicubic": dict(size=(6, 6), mode="bicubic"),
}


class TinyUNet(nn.Module):
    """conv -> pool -> conv -> upsample -> concat with the skip -> conv: a decoder without
    transposed convolutions."""

    def __init__(self, **resample):
        super().__init__()
        self.resample = resample
        self.down, self.mid, self.up = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.relu(self.down(x))
        h = torch.relu(self.mid(F.max_pool2d(skip, 2)))
        return self.up(torch.cat([skip, F.interpolate(h, **self.resample)], dim=1))


X = torch.randn(2, 2, 6, 6)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_unet_decoder_passes_every_oracle(mode):
    graph = assert_oracles(TinyUNet(**MODES[mode]), (X,))
    activations = graph.vocabulary.activations
    marked = {activations[int(c)] for c in graph.data.x[:, 3].tolist() if c >= 0}
    expected = {"nearest": "nearest", "nearest-exact": "nearest", "bilinear": "linear", "bicubic": "cubic"}
    assert f"resize_{expected[MODES[mode]['mode']]}" in marked


def test_mode_and_its_parameters_tell_graphs_apart():
    graphs = {}
    torch.manual_seed(0)
    reference = TinyUNet(**MODES["nearest"])
    for mode, resample in MODES.items():
        model = TinyUNet(**resample)
        model.load_state_dict(reference.state_dict())
        graphs[mode] = gc.compile(model.eval(), (X,))
    names = sorted(graphs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not canonical.isomorphic(graphs[a], graphs[b]), (a, b)


def test_nn_upsample_is_the_same_op_as_interpolate():
    class WithModule(TinyUNet):
        def __init__(self):
            super().__init__(**MODES["bilinear"])
            self.upsample = nn.Upsample(scale_factor=2, mode="bilinear")

        def forward(self, x):
            skip = torch.relu(self.down(x))
            return self.up(torch.cat([skip, self.upsample(torch.relu(self.mid(F.max_pool2d(skip, 2))))], dim=1))

    torch.manual_seed(0)
    a = TinyUNet(**MODES["bilinear"])
    b = WithModule()
    b.load_state_dict(a.state_dict())
    assert canonical.isomorphic(gc.compile(a.eval(), (X,)), gc.compile(b.eval(), (X,)))


def test_resampling_an_axis_with_neurons_is_refused():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(10, 2)

        def forward(self, x):  # [B, T, 4]: the linear's 5 units sit on the last axis
            return self.b(F.interpolate(self.a(x), scale_factor=2, mode="linear"))

    with pytest.raises(gc.LoweringError, match="resampling an axis that carries neurons"):
        gc.compile(Tokens(), (torch.randn(2, 3, 4),))


@pytest.mark.parametrize("mode", sorted(set(MODES) - {"nearest-exact"}))  # no ONNX export of nearest-exact
def test_torch_and_its_onnx_export_give_isomorphic_graphs(mode, tmp_path):
    """Frontend parity: the exporter writes ``Resize`` with the coordinate mapping and rounding
    of torch's op, which the torch frontend names the same way."""
    from gmn_compiler.testing import randomized

    model = randomized(TinyUNet(**MODES[mode]))
    path = str(tmp_path / "unet.onnx")
    torch.onnx.export(model, (X,), path, dynamo=False, opset_version=17)
    assert canonical.isomorphic(gc.compile(path), gc.compile(model, (X,)))
