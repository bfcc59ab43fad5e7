"""``torch.gather`` / ``GatherElements`` with constant indices, and a parameter table read as a
tensor (``param_value``): DeBERTa-style disentangled attention, written small, passes every
oracle; which positions are gathered, and how the table is read, tell graphs apart; the ONNX
export compiles to the same graph; what cannot be encoded is refused in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.errors import CompileError
from gmn_compiler.testing import assert_oracles, randomized

T, C, H = 4, 8, 2


def relative_index(sign: int = 1) -> torch.Tensor:
    """For query ``i`` and key ``j``: the row of distance ``sign * (i - j)`` in a ``2T - 1`` table."""
    i, j = torch.arange(T).view(T, 1), torch.arange(T).view(1, T)
    return sign * (i - j) + T - 1


class Disentangled(nn.Module):
    """Content-to-content plus content-to-position scores: the relative table is normalised and
    projected by the layer's own key projection (the table read as a tensor), every query's
    scores against all distances are gathered into (query, key) pairs."""

    def __init__(self, sign: int = 1, norm_table: bool = True, own_projection: bool = False):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(C, C) for _ in range(4))
        self.pos_proj = nn.Linear(C, C) if own_projection else self.k
        self.table = nn.Parameter(torch.randn(2 * T - 1, C))
        self.norm = nn.LayerNorm(C) if norm_table else nn.Identity()
        self.register_buffer("index", relative_index(sign), persistent=False)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], H, C // H).transpose(1, 2)

    def forward(self, x):
        q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
        pos_k = self.heads(self.pos_proj(self.norm(self.table)).unsqueeze(0))  # [1, H, 2T-1, C/H]
        c2p = q @ pos_k.transpose(-1, -2)  # [B, H, T, 2T-1]
        c2p = torch.gather(c2p, -1, self.index.expand(x.shape[0], H, T, T))
        attn = torch.softmax(q @ k.transpose(-1, -2) + c2p, dim=-1)
        return self.o((attn @ v).transpose(1, 2).reshape(x.shape[0], T, C))


X = torch.randn(1, T, C)


@pytest.mark.parametrize("own_projection", [False, True])
def test_disentangled_attention_passes_every_oracle(own_projection):
    """The table's dims are declared permutable when its projection is its own; projected by
    the key projection (as DeBERTa does), they meet the model input's channels through the
    tied copies of k.weight, so the declaration is withdrawn (the graph never had it)."""
    graph = assert_oracles(randomized(Disentangled(own_projection=own_projection)), (X,), trials=3, max_pairs=4)
    assert any("read as a tensor" in s["what"] for s in graph.symmetries) == own_projection


def test_which_positions_are_gathered_tells_graphs_apart():
    """Distances ``i - j`` and ``j - i``: the same parameters, other scores."""
    model = randomized(Disentangled(sign=1))
    other = Disentangled(sign=-1)
    other.load_state_dict(model.state_dict())
    assert not torch.allclose(model(X), other(X))
    assert not canonical.isomorphic(gc.compile(model, (X,)), gc.compile(other, (X,)))


def test_the_table_is_one_edge_per_entry_and_edits_write_back():
    model = randomized(Disentangled())
    pg = gc.compile(model, (X,))
    edges = pg.data.edge_param == [p.name for p in pg.params].index("table")
    assert int(edges.sum()) == (2 * T - 1) * C  # every entry, once
    values = pg.data.edge_attr[:, 0].clone()
    values[edges] = 2.0
    state = pg.to_state_dict(values)
    assert torch.equal(state["table"], torch.full((2 * T - 1, C), 2.0))
    assert torch.equal(state["k.weight"], model.k.weight.detach())


def test_normalising_the_table_or_not_gives_other_graphs():
    model = randomized(Disentangled(norm_table=True))
    plain = Disentangled(norm_table=False)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("norm")})
    assert not canonical.isomorphic(gc.compile(model, (X,)), gc.compile(plain, (X,)))


def test_a_gather_that_differs_per_head_is_refused():
    class PerHead(Disentangled):
        def __init__(self):
            super().__init__()
            self.register_buffer("index", torch.stack([relative_index(1), relative_index(-1)]), persistent=False)

        def forward(self, x):
            q = self.heads(self.q(x))
            pos_k = self.heads(self.k(self.table).unsqueeze(0))
            c2p = torch.gather(q @ pos_k.transpose(-1, -2), -1, self.index.unsqueeze(0))
            return self.o((torch.softmax(c2p, -1) @ self.heads(self.v(x))).transpose(1, 2).reshape(1, T, C))

    with pytest.raises(CompileError, match="gather whose indices differ along axis 1"):
        gc.compile(PerHead(), (X,))


def test_a_gather_along_neurons_is_refused():
    class AlongChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(C, C)
            self.register_buffer("index", torch.arange(C).flip(0).expand(1, T, C).clone(), persistent=False)

        def forward(self, x):
            return torch.gather(self.fc(x), -1, self.index)

    with pytest.raises(CompileError, match="gather along axis 2, which carries neurons"):
        gc.compile(AlongChannels(), (X,))


def test_torch_and_its_onnx_export_give_isomorphic_graphs(tmp_path):
    model = randomized(Disentangled())
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(model, (X,), path, dynamo=False, opset_version=17, do_constant_folding=False)
    import onnx

    assert "GatherElements" in {n.op_type for n in onnx.load(path).graph.node}
    assert canonical.isomorphic(gc.compile(model, (X,)), gc.compile(path))
