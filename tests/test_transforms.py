"""DenseFeatures (issue 15, item 7): schema columns -> dense float features that stock PyG
layers train on through an unchanged ``torch_geometric.loader.DataLoader``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GATv2Conv, GINEConv, GPSConv, PNAConv, TransformerConv, global_mean_pool
from torch_geometric.utils import degree, to_networkx

import gmn_compiler as gc
from gmn_compiler import schema
from gmn_compiler.registry import load_registry
from gmn_compiler.transforms import DenseFeatures

from cumsum_plugin import CumsumPlugin, RunningSum

ROLE, DEPTH, POS, ACT = (schema.node_column(c) for c in ("role", "depth", "position", "activation"))
VALUE, TYPE = schema.edge_column("value"), schema.edge_column("type")


class Block(nn.Module):
    """A tiny pre-norm attention block."""

    def __init__(self) -> None:
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(8), nn.Linear(8, 3)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return self.fc((h + self.att(h, h, h, need_weights=False)[0]).mean(1))


def mlp(width: int, depth: int) -> nn.Module:
    layers, d = [], 3
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 2))


def cnn(channels: int, depth: int) -> nn.Module:
    layers, d = [], 2
    for _ in range(depth):
        layers += [nn.Conv2d(d, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
        d = channels
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(d, 2)).eval()


def compiled(model: nn.Module) -> Data:
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    inputs = torch.randn(1, 2, 5, 5) if conv else torch.randn(1, 3)
    return gc.compile(model, (inputs,)).data


@pytest.fixture(scope="module")
def graphs() -> list[Data]:
    """An MLP, a CNN with batch norm (random running statistics), an attention block."""
    torch.manual_seed(0)
    net = cnn(4, 2)
    with torch.no_grad():
        net[1].running_mean.normal_(), net[1].running_var.uniform_(0.5, 30.0)
    block = gc.compile(Block(), (torch.randn(1, 4, 8),)).data
    return [compiled(mlp(5, 2)), compiled(net), block]


def test_widths_dtypes_and_blocks(graphs):
    tf = DenseFeatures(num_freqs=4)
    s = 2 * 4
    assert tf.node_dim == len(schema.NODE_ROLES) + 1 + len(schema.ACTIVATIONS) + 1 + s + (s + 1) + (s + 1)
    assert tf.edge_dim == 2 + len(schema.EDGE_TYPES) + 1 + 4 * (s + 1)
    for blocks, dim in ((tf.node_blocks, tf.node_dim), (tf.edge_blocks, tf.edge_dim)):
        ends = [0] + [b.stop for b in blocks.values()]
        assert [b.start for b in blocks.values()] == ends[:-1] and ends[-1] == dim
    for d in graphs:
        out = tf(d)
        assert out.x.dtype == out.edge_attr.dtype == torch.float32
        assert out.x.shape == (d.num_nodes, tf.node_dim)
        assert out.edge_attr.shape == (d.edge_index.shape[1], tf.edge_dim)
    assert DenseFeatures(value_transforms=("symlog",)).edge_dim == DenseFeatures().edge_dim - 1
    for bad in ((), ("log",), ("raw", "raw")):
        with pytest.raises(ValueError, match="value_transforms"):
            DenseFeatures(value_transforms=bad)


def test_blocks_encode_the_columns(graphs):
    tf = DenseFeatures(num_freqs=3, max_value=100)
    nb, eb = tf.node_blocks, tf.edge_blocks
    for d in graphs:
        out = tf(d)
        for block, codes in ((out.x[:, nb["role"]], d.x[:, ROLE]), (out.x[:, nb["activation"]], d.x[:, ACT]),
                             (out.edge_attr[:, eb["type"]], d.edge_attr[:, TYPE])):
            assert torch.equal(block.sum(1), torch.ones(len(block)))
            assert torch.equal(block.argmax(1), codes.long())  # compiled codes are all known
        depth = out.x[:, nb["depth"]]  # frequencies 1, 0.1, 0.01: sin then cos
        torch.testing.assert_close(depth[:, 0], torch.sin(d.x[:, DEPTH]))
        torch.testing.assert_close(depth[:, 5], torch.cos(d.x[:, DEPTH] / 100))
        pos, none = out.x[:, nb["position"]], d.x[:, POS] == -1
        assert none.any() and (~none).any()
        assert torch.equal(pos[:, -1], none.float()) and not pos[none, :-1].any()
        torch.testing.assert_close(pos[~none, 3], torch.cos(d.x[~none, POS]))
        value = out.edge_attr[:, eb["value"]]
        assert torch.equal(value[:, 0], d.edge_attr[:, VALUE])
        torch.testing.assert_close(value[:, 1], torch.sign(value[:, 0]) * torch.log1p(value[:, 0].abs()))
        for name in ("kernel0", "kernel1", "kernel2", "spatial"):
            column, block = d.edge_attr[:, schema.edge_column(name)], out.edge_attr[:, eb[name]]
            assert torch.equal(block[:, -1], (column == -1).float())
            torch.testing.assert_close(block[:, 0], torch.sin(column.clamp(min=0)) * (column >= 0))
    kernel = tf(graphs[1]).edge_attr[:, eb["kernel1"]]
    assert (kernel[:, -1] == 0).any() and kernel[:, :-1].abs().sum() > 0  # the CNN has conv kernels


def test_signature_block_tells_identifiers_apart():
    tf = DenseFeatures(num_freqs=4)
    ids = torch.tensor([0.0, 7.0, 7.0, 912_345.0, float(1 << 20)])
    x = torch.zeros(len(ids), len(schema.NODE_COLUMNS))
    x[:, schema.node_column("signature")] = ids
    block = tf.node_features(x)[:, tf.node_blocks["signature"]]
    assert torch.equal(block[:, -1], torch.tensor([1.0, 0, 0, 0, 0]))  # the "none" flag
    assert not block[0, :-1].any()
    assert torch.equal(block[1], block[2])
    rows = [block[i] for i in (1, 3, 4)]
    assert all(float((a - b).abs().max()) > 1e-3 for i, a in enumerate(rows) for b in rows[i + 1:])


def test_codes_outside_the_vocabulary_go_to_the_unknown_slot(graphs):
    tf = DenseFeatures()
    nb, eb = tf.node_blocks, tf.edge_blocks
    d = graphs[0].clone()
    d.x[0, ROLE], d.x[1, ACT] = -1, len(schema.ACTIVATIONS)
    d.edge_attr[0, TYPE] = len(schema.EDGE_TYPES) + 7
    out = tf(d)
    role, act, etype = out.x[:, nb["role"]], out.x[:, nb["activation"]], out.edge_attr[:, eb["type"]]
    assert role[:, -1].nonzero().flatten().tolist() == [0]
    assert act[:, -1].nonzero().flatten().tolist() == [1]
    assert etype[:, -1].nonzero().flatten().tolist() == [0]
    assert torch.equal(role.sum(1), torch.ones(d.num_nodes)) and torch.equal(etype.sum(1), torch.ones(len(etype)))


def test_extended_vocabulary_widens_the_one_hot():
    registry = load_registry([CumsumPlugin()], entry_points=False)
    pg = gc.compile(RunningSum(), (torch.randn(1, 5, 4),), registry=registry)
    assert "cumsum" in pg.vocabulary.extensions()["activations"]
    target = schema.BUILTIN.extended(activations=["cumsum"])
    x, edge_attr = pg.vocabulary.translate_columns(pg.data.x, pg.data.edge_attr, target)
    data = Data(x=x, edge_index=pg.data.edge_index, edge_attr=edge_attr, num_nodes=pg.data.num_nodes)
    wide, narrow = DenseFeatures(target), DenseFeatures()
    assert wide.node_dim == narrow.node_dim + 1 and wide.edge_dim == narrow.edge_dim
    cumsum = data.x[:, ACT] == len(schema.ACTIVATIONS)
    assert cumsum.sum() == 6
    act_wide = wide(data).x[:, wide.node_blocks["activation"]]
    act_narrow = narrow(data).x[:, narrow.node_blocks["activation"]]
    assert torch.equal(act_wide[:, len(schema.ACTIVATIONS)], cumsum.float()) and not act_wide[:, -1].any()
    assert torch.equal(act_narrow[:, -1], cumsum.float())
    own = DenseFeatures(pg.vocabulary)  # the graph's own vocabulary (plugins may add more names)
    ext = pg.vocabulary.extensions()
    assert own.node_dim == narrow.node_dim + len(ext["node_roles"]) + len(ext["activations"])
    assert not own(pg.data).x[:, own.node_blocks["activation"]][:, -1].any()


def test_input_untouched_schema_kept_and_deterministic(graphs):
    d = graphs[1]
    keys, before = set(d.keys()), {k: v.clone() for k, v in d.items() if torch.is_tensor(v)}
    tf = DenseFeatures()
    out = tf(d)
    assert set(d.keys()) == keys and all(torch.equal(d[k], v) for k, v in before.items())
    assert out.schema_x is d.x and out.schema_edge_attr is d.edge_attr
    for key in ("edge_index", "edge_param", "edge_offset"):
        assert out[key] is d[key]
    assert out.num_nodes == d.num_nodes
    again = tf.forward(d)  # forward (no copy by BaseTransform.__call__) must not mutate either
    assert torch.equal(again.x, out.x) and torch.equal(again.edge_attr, out.edge_attr) and d.x.shape[1] == len(gc.schema.NODE_COLUMNS)
    lean = DenseFeatures(keep_schema=False)(d)
    assert "schema_x" not in lean and "schema_edge_attr" not in lean and torch.equal(lean.x, out.x)
    with pytest.raises(ValueError, match="already transformed"):
        tf(out)


def test_relabelling_nodes_permutes_the_features(graphs):
    gen = torch.Generator().manual_seed(3)
    tf = DenseFeatures()
    for d in graphs:
        order = torch.randperm(d.num_nodes, generator=gen)  # new node i is old node order[i]
        new_id = torch.empty_like(order)
        new_id[order] = torch.arange(d.num_nodes)
        edge_perm = torch.randperm(d.edge_index.shape[1], generator=gen)
        moved = Data(x=d.x[order], edge_index=new_id[d.edge_index[:, edge_perm]],
                     edge_attr=d.edge_attr[edge_perm], num_nodes=d.num_nodes)
        a, b = tf(d), tf(moved)
        assert torch.equal(b.x, a.x[order]) and torch.equal(b.edge_attr, a.edge_attr[edge_perm])


def test_batches_and_to_networkx(graphs):
    tf = DenseFeatures()
    batch = next(iter(DataLoader([tf(d) for d in graphs], batch_size=3)))
    assert torch.equal(batch.x, tf(Batch.from_data_list(graphs)).x)
    assert torch.equal(batch.schema_edge_attr, torch.cat([d.edge_attr for d in graphs]))
    out = tf(graphs[1])  # a CNN: one parallel edge per kernel entry, hence to_multi
    g = to_networkx(out, node_attrs=["x"], edge_attrs=["edge_attr"], to_multi=True)
    assert g.number_of_nodes() == out.num_nodes and g.number_of_edges() == out.edge_index.shape[1]
    assert g.nodes[2]["x"] == out.x[2].tolist() and len(next(iter(g.edges(data=True)))[2]["edge_attr"]) == tf.edge_dim


# ------------------------------------------------------------------ stock PyG layers train on them
HIDDEN = 24


def make_conv(name: str, edge_dim: int, deg: torch.Tensor) -> nn.Module:
    def gine() -> GINEConv:
        return GINEConv(nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN)), edge_dim=edge_dim)
    if name == "gine":
        return gine()
    if name == "gatv2":
        return GATv2Conv(HIDDEN, HIDDEN, edge_dim=edge_dim)
    if name == "transformer":
        return TransformerConv(HIDDEN, HIDDEN, edge_dim=edge_dim)
    if name == "pna":
        return PNAConv(HIDDEN, HIDDEN, ["mean", "max", "std"], ["identity", "amplification"], deg, edge_dim=edge_dim)
    return GPSConv(HIDDEN, gine(), heads=2)


class Regressor(nn.Module):
    """Linear encoder, two stock conv layers, global mean pool, linear head."""

    def __init__(self, name: str, tf: DenseFeatures, deg: torch.Tensor) -> None:
        super().__init__()
        self.gps = name == "gps"
        self.encode, self.head = nn.Linear(tf.node_dim, HIDDEN), nn.Linear(HIDDEN, 1)
        self.convs = nn.ModuleList(make_conv(name, tf.edge_dim, deg) for _ in range(2))

    def forward(self, b: Batch) -> torch.Tensor:
        h = self.encode(b.x)
        for conv in self.convs:
            h = conv(h, b.edge_index, b.batch, edge_attr=b.edge_attr) if self.gps \
                else conv(h, b.edge_index, edge_attr=b.edge_attr).relu()
        return self.head(global_mean_pool(h, b.batch)).squeeze(-1)


def degree_histogram(graphs: list[Data]) -> torch.Tensor:
    degs = [degree(d.edge_index[1], d.num_nodes, dtype=torch.long) for d in graphs]
    return torch.bincount(torch.cat(degs))


def loss_ratio(name: str, graphs: list[Data], tf: DenseFeatures, steps: int = 96) -> float:
    """Full-data MSE after ``steps`` Adam steps (batches of 4) over the MSE before."""
    torch.manual_seed(0)
    model = Regressor(name, tf, degree_histogram(graphs))
    opt = torch.optim.Adam(model.parameters(), lr=0.005)

    def full_loss() -> float:
        model.eval()
        with torch.no_grad():
            b = next(iter(DataLoader(graphs, batch_size=len(graphs))))
            return float(((model(b) - b.y) ** 2).mean())

    first, done = full_loss(), 0
    model.train()
    while done < steps:
        for b in DataLoader(graphs, batch_size=4, shuffle=True):
            opt.zero_grad()
            ((model(b) - b.y) ** 2).mean().backward()
            opt.step()
            done += 1
    return full_loss() / first


def with_targets(graphs: list[Data], targets: list[float]) -> list[Data]:
    y = torch.tensor(targets)
    y = (y - y.mean()) / y.std()
    for d, t in zip(graphs, y):
        d.y = t.view(1)
    return graphs


@pytest.fixture(scope="module")
def zoo() -> tuple[list[Data], list[int]]:
    """Compiled MLPs and CNNs of several widths and depths, with their parameter counts."""
    torch.manual_seed(0)
    models = [mlp(w, n) for w, n in ((4, 1), (8, 2), (12, 1), (6, 3), (16, 2), (3, 2))]
    models += [cnn(c, n) for c, n in ((3, 1), (6, 2), (4, 2), (8, 1), (2, 2), (5, 1))]
    return [compiled(m) for m in models], [sum(p.numel() for p in m.parameters()) for m in models]


@pytest.mark.parametrize("name", ["gine", "gatv2", "transformer", "pna", "gps"])
def test_stock_layer_learns_the_parameter_count(zoo, name):
    tf = DenseFeatures()
    graphs = with_targets([tf(d) for d in zoo[0]], [math.log(n) for n in zoo[1]])
    assert loss_ratio(name, graphs, tf) < 0.5


def test_edge_values_reach_the_model():
    """One architecture at 12 weight scales: only the edge values tell the graphs apart."""
    torch.manual_seed(0)
    tf, graphs, targets = DenseFeatures(), [], []
    for scale in torch.linspace(0.3, 3.0, 12).tolist():
        model = mlp(6, 2)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
        graphs.append(tf(compiled(model)))
        targets.append(math.log(torch.cat([p.flatten() for p in model.parameters()]).abs().mean().item()))
    graphs = with_targets(graphs, targets)
    assert loss_ratio("gine", graphs, tf) < 0.5
    for d in graphs:  # control: without the value block nothing is left to learn from
        d.edge_attr = d.edge_attr.clone()
        d.edge_attr[:, tf.edge_blocks["value"]] = 0
    assert loss_ratio("gine", graphs, tf) > 0.8
