"""Channels to space and back (``pixel_shuffle`` / ``DepthToSpace``, ``pixel_unshuffle`` /
``SpaceToDepth``): sub-pixel upsamplers and Focus stems pass every oracle, the block size and
the channel order tell graphs apart, and the ONNX exports compile to the same graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.testing import assert_oracles, randomized


class SubPixel(nn.Module):
    """ESPCN-style: conv to ``out * r * r`` channels, ``pixel_shuffle(r)``, then a 3x3 conv."""

    def __init__(self, r: int = 2, out: int = 2):
        super().__init__()
        self.r = r
        self.expand, self.refine = nn.Conv2d(3, out * r * r, 3, padding=1), nn.Conv2d(out, 2, 3, padding=1)

    def forward(self, x):
        return self.refine(torch.relu(F.pixel_shuffle(self.expand(x), self.r)))


class Focus(nn.Module):
    """YOLOv5's Focus stem: space to depth, then a conv over the stacked offsets; and back."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(12, 8, 1), nn.Conv2d(2, 3, 1)

    def forward(self, x):
        return self.head(F.pixel_shuffle(torch.tanh(self.conv(F.pixel_unshuffle(x, 2))), 2))


X = torch.randn(1, 3, 4, 4)


@pytest.mark.parametrize("build", [SubPixel, Focus], ids=["espcn", "focus"])
def test_sub_pixel_models_pass_every_oracle(build):
    graph = assert_oracles(randomized(build()), (X,), trials=3, max_pairs=4)
    declared = [s for s in graph.symmetries if "depth_to_space" in s["what"]]
    assert declared and declared[0]["permute_groups"]  # output channels move with their sources


def test_the_declared_groups_are_exactly_the_automorphisms():
    """Output channel c of pixel_shuffle moves with its r * r sources; a source alone cannot
    move: exchanging two sources of one output channel is no automorphism."""
    pg = gc.compile(randomized(SubPixel()), (X,))
    sym = next(s for s in pg.symmetries if "depth_to_space" in s["what"])
    assert canonical.extend_to_automorphism(pg, {0: 0}) is not None
    out = sym["nodes"].tolist()
    assert canonical.extend_to_automorphism(pg, {out[0]: out[1], out[1]: out[0]}) is not None
    src = pg.data.edge_index[0, pg.data.edge_index[1] == out[0]]
    sources = [int(s) for s in src if int(s) not in out]
    a, b = sources[:2]
    others = {u: u for u in out}
    assert canonical.extend_to_automorphism(pg, {**others, a: b, b: a}) is None


def test_block_size_and_channel_order_tell_graphs_apart():
    class Shuffle(nn.Module):
        def __init__(self, r, transpose):
            super().__init__()
            self.r, self.transpose = r, transpose
            self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(16 // (r * r), 2, 1)
            torch.manual_seed(0)
            for p in self.parameters():
                nn.init.normal_(p)

        def forward(self, x):
            h = self.a(x)
            if self.transpose:  # DCR order written out in torch: the offset before the channel
                n, c, hh, ww = h.shape
                h = h.view(n, self.r * self.r, c // (self.r * self.r), hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
            return self.b(F.pixel_shuffle(h, self.r))

    plain, other_order, bigger = (gc.compile(Shuffle(r, t), (X,)) for r, t in ((2, False), (2, True), (4, False)))
    assert not canonical.isomorphic(plain, bigger)
    assert not canonical.isomorphic(plain, other_order)  # same weights, channels land elsewhere
    assert canonical.isomorphic(plain, gc.compile(Shuffle(2, False), (X,)))


@pytest.mark.parametrize("build", [SubPixel, Focus], ids=["espcn", "focus"])
def test_torch_and_its_onnx_export_give_isomorphic_graphs(build, tmp_path):
    model = randomized(build())
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(model, (X,), path, dynamo=False, opset_version=17)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ops & {"DepthToSpace", "SpaceToDepth"}
    assert canonical.isomorphic(gc.compile(path), gc.compile(model, (X,)))


def _save_onnx(path: str, nodes: list, arrays: dict, out_shape: list[int]) -> str:
    """An opset-17 model of ``nodes`` reading ``x`` ``[1, 3, 4, 4]`` and writing ``y``, with
    ``arrays`` as initializers (integer arrays as int64, the others as float32)."""
    inits = [onnx.numpy_helper.from_array(a.astype(np.int64 if a.dtype.kind == "i" else np.float32), n)
             for n, a in arrays.items()]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _onnx_file(path, mode: str) -> str:
    """conv (3 -> 8) -> DepthToSpace(2, mode) -> conv (2 -> 2), weights fixed."""
    rng = np.random.default_rng(0)
    arrays = {"w1": rng.standard_normal((8, 3, 1, 1)), "b1": rng.standard_normal(8),
              "w2": rng.standard_normal((2, 2, 1, 1)), "b2": rng.standard_normal(2)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"]),
             helper.make_node("DepthToSpace", ["h"], ["s"], blocksize=2, mode=mode),
             helper.make_node("Conv", ["s", "w2", "b2"], ["y"])]
    return _save_onnx(path, nodes, arrays, [1, 2, 8, 8])


def test_onnx_depth_to_space_modes_pass_the_oracles_and_differ(tmp_path):
    """DCR and CRD read different channels for the same weights: different graphs, both sound
    and complete when run through onnxruntime."""
    dcr, crd = _onnx_file(str(tmp_path / "dcr.onnx"), "DCR"), _onnx_file(str(tmp_path / "crd.onnx"), "CRD")
    for path in (dcr, crd):
        report = gc.check_symmetry(path)
        assert report.symmetries_checked
    assert not canonical.isomorphic(gc.compile(dcr), gc.compile(crd))
    # the same weights with the channels reordered from DCR to CRD compute DCR's function and
    # compile to DCR's graph: the order is in the graph only through which channel lands where
    w1 = onnx.numpy_helper.to_array(onnx.load(dcr).graph.initializer[0])
    order = [(i * 2 + j) * 2 + c for c in range(2) for i in range(2) for j in range(2)]
    model = onnx.load(crd)
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w1[order], "w1"))
    b1 = onnx.numpy_helper.to_array(onnx.load(dcr).graph.initializer[1])
    model.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(b1[order], "b1"))
    onnx.save(model, str(tmp_path / "crd_reordered.onnx"))
    assert canonical.isomorphic(gc.compile(str(tmp_path / "crd_reordered.onnx")), gc.compile(dcr))


def test_depth_to_space_of_neurons_along_space_is_refused():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(48, 16)

        def forward(self, x):
            return F.pixel_shuffle(self.a(x.flatten(1)).view(1, 4, 2, 2), 2)

    with pytest.raises(gc.CompileError, match=r"depth_to_space: axes \[2, 3\] carry neurons"):
        gc.compile(Flat(), (X,))


def _space_to_depth_file(path: str, spelled: str | None) -> str:
    """SpaceToDepth(2) -> conv (12 -> 4) -> relu -> conv (4 -> 2); or the same with the
    rearrangement written as Reshape, Transpose, Reshape: ``spelled="DCR"`` is SpaceToDepth's
    definition, ``spelled="CRD"`` torch's ``pixel_unshuffle`` channel order."""
    rng = np.random.default_rng(1)
    arrays = {"w1": rng.standard_normal((4, 12, 1, 1)), "b1": rng.standard_normal(4),
              "w2": rng.standard_normal((2, 4, 1, 1)), "b2": rng.standard_normal(2),
              "split": np.array([1, 3, 2, 2, 2, 2]), "merged": np.array([1, 12, 2, 2])}
    if spelled is not None:
        perm = [0, 3, 5, 1, 2, 4] if spelled == "DCR" else [0, 1, 3, 5, 2, 4]
        head = [helper.make_node("Reshape", ["x", "split"], ["r"]),
                helper.make_node("Transpose", ["r"], ["t"], perm=perm),
                helper.make_node("Reshape", ["t", "merged"], ["s"])]
    else:
        head = [helper.make_node("SpaceToDepth", ["x"], ["s"], blocksize=2)]
    nodes = head + [helper.make_node("Conv", ["s", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
                    helper.make_node("Conv", ["a", "w2", "b2"], ["y"])]
    return _save_onnx(path, nodes, arrays, [1, 2, 2, 2])


def test_onnx_space_to_depth_is_its_defining_reshape_transpose_reshape(tmp_path):
    """Its definition (DCR) gives SpaceToDepth's graph; the same weights read in torch's
    channel order (CRD) compute another function and give another graph."""
    op = _space_to_depth_file(str(tmp_path / "op.onnx"), None)
    assert canonical.isomorphic(gc.compile(op), gc.compile(_space_to_depth_file(str(tmp_path / "dcr.onnx"), "DCR")))
    assert not canonical.isomorphic(gc.compile(op), gc.compile(_space_to_depth_file(str(tmp_path / "crd.onnx"), "CRD")))
    assert gc.check_symmetry(op).symmetries_checked
