"""plugins/embedding.py and the rest of a transformer: token and positional embeddings, tied
input/output embeddings, class tokens, RMSNorm, gated MLPs, nn.TransformerEncoder/Decoder."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from oracles import assert_isomorphic, assert_oracles, assert_round_trip, export_onnx

S = gc.schema
VOCAB, DIM, SEQ = 11, 6, 5
PAD = 1  # RoBERTa's padding id


def _count_role(pg, role: str) -> int:
    return int((pg.data.x[:, S.node_column("role")] == S.code(S.NODE_ROLES, role)).sum())


def _ids(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ))


class TinyLM(nn.Module):
    """Token + learned positional embedding, optional class token, RMSNorm, gated MLP, and an
    output head tied to the token table."""

    def __init__(self, tied: bool = True, cls_token: bool = False, max_positions: int = 8):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(max_positions, DIM)
        self.cls = nn.Parameter(torch.randn(1, 1, DIM)) if cls_token else None
        self.norm = nn.RMSNorm(DIM)
        self.gate, self.up, self.down = nn.Linear(DIM, 8), nn.Linear(DIM, 8), nn.Linear(8, DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        if tied:
            self.head.weight = self.tok.weight
        with torch.no_grad():
            self.norm.weight.normal_()

    def forward(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]).unsqueeze(0))
        if self.cls is not None:
            h = torch.cat([self.cls.expand(ids.shape[0], -1, -1), h], dim=1)
        h = self.norm(h)
        h = h + self.down(nn.functional.silu(self.gate(h)) * self.up(h))  # SwiGLU, residual
        return self.head(h)


def test_token_embedding_pins_one_node_per_vocabulary_entry():
    model = TinyLM(tied=False).eval()
    pg = assert_oracles(model, (_ids(),), trials=4)
    assert _count_role(pg, "token") == VOCAB
    embedding = S.code(S.EDGE_TYPES, "embedding")
    assert int((pg.data.edge_attr[:, 1] == embedding).sum()) == VOCAB * DIM
    tokens = pg.data.x[:, S.node_column("role")] == S.code(S.NODE_ROLES, "token")
    assert sorted(pg.data.x[tokens, S.node_column("position")].long().tolist()) == list(range(VOCAB))


def test_tied_embeddings_are_one_parameter_with_both_names():
    model = TinyLM(tied=True).eval()
    pg = assert_oracles(model, (_ids(),), trials=4)
    state = pg.to_state_dict(pg.data.edge_attr[:, 0])
    assert torch.equal(state["tok.weight"], model.tok.weight) and torch.equal(state["head.weight"], model.tok.weight)
    assert _count_role(pg, "tie") == VOCAB + DIM  # vocabulary index and dimension tied
    # Editing the two uses differently is refused, naming the parameter.
    values = pg.data.edge_attr[:, 0].clone()
    table = [p.name for p in pg.params].index("tok.weight")
    values[torch.nonzero(pg.data.edge_param == table)[0]] += 1.0
    with pytest.raises(gc.DecompileError, match="tok.weight"):
        pg.to_state_dict(values)


def test_positional_rows_beyond_the_example_keep_their_values():
    model = TinyLM(max_positions=8).eval()
    pg = assert_round_trip(model, (_ids(),))
    assert _count_role(pg, "token") == VOCAB  # the positional table is not a token lookup
    names = [p.name for p in pg.params]
    pos_edges = pg.data.edge_param == names.index("pos.weight")
    assert int(pos_edges.sum()) == SEQ * DIM  # only the positions the example uses
    values = pg.data.edge_attr[:, 0].clone()
    values[pos_edges] = 0.0
    state = pg.to_state_dict(values)
    assert torch.equal(state["pos.weight"][:SEQ], torch.zeros(SEQ, DIM))
    assert torch.equal(state["pos.weight"][SEQ:], model.pos.weight[SEQ:].detach())


def test_class_token_graph_does_not_depend_on_batch_size():
    model = TinyLM(cls_token=True).eval()
    pg = assert_oracles(model, (_ids(2),), trials=4)
    param_cat = S.code(S.EDGE_TYPES, "param_cat")
    assert int((pg.data.edge_attr[:, 1] == param_cat).sum()) == DIM
    assert_isomorphic(pg, gc.compile(model, (_ids(3),)))


def test_rms_norm_is_recorded_and_its_weight_attached():
    model = TinyLM().eval()
    pg = gc.compile(model, (_ids(),))
    activation = pg.data.x[:, S.node_column("activation")]
    assert int((activation == S.code(S.ACTIVATIONS, "rms_norm")).sum()) == DIM
    assert int((pg.data.edge_attr[:, 1] == S.code(S.EDGE_TYPES, "rms_weight")).sum()) == DIM


def test_swapping_gate_and_up_projections_is_visible():
    """SwiGLU is not symmetric in its two branches: silu sits on one of them."""
    model = TinyLM().eval()
    swapped = TinyLM().eval()
    swapped.load_state_dict(model.state_dict())
    with torch.no_grad():
        swapped.gate.weight.copy_(model.up.weight), swapped.up.weight.copy_(model.gate.weight)
        swapped.gate.bias.copy_(model.up.bias), swapped.up.bias.copy_(model.gate.bias)
    from oracles import assert_not_isomorphic, functions_differ

    ids = _ids()
    assert functions_differ(model, swapped, (ids,))
    assert_not_isomorphic(gc.compile(model, (ids,)), gc.compile(swapped, (ids,)))


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_transformer_encoder(norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first)
    model = nn.Sequential(nn.Linear(3, 8), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                          nn.Linear(8, 2)).eval()
    pg = assert_oracles(model, (torch.randn(2, 4, 3),), trials=3)
    assert _count_role(pg, "head") == 2 * 2  # two heads in each of two layers


def test_transformer_decoder_cross_attention():
    torch.manual_seed(0)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.src, self.tgt = nn.Linear(3, 8), nn.Linear(3, 8)
            layer = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.decoder = nn.TransformerDecoder(layer, 1)
            self.out = nn.Linear(8, 2)

        def forward(self, tgt, memory):
            return self.out(self.decoder(self.tgt(tgt), self.src(memory)))

    pg = assert_oracles(Decoder().eval(), (torch.randn(2, 4, 3), torch.randn(2, 6, 3)), trials=3)
    assert _count_role(pg, "head") == 2 * 2  # self- and cross-attention


def test_onnx_gather_on_a_table_is_an_embedding(tmp_path):
    class Tagger(nn.Module):  # RMSNorm has no ONNX export at opset 18: keep to Gather + Gemm
        def __init__(self):
            super().__init__()
            self.tok, self.out = nn.Embedding(VOCAB, DIM), nn.Linear(DIM, 3)

        def forward(self, ids):
            return self.out(torch.tanh(self.tok(ids)))

    model = Tagger().eval()
    ids = _ids(1)
    path = tmp_path / "lm.onnx"
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (ids,), str(path), dynamo=False, opset_version=18,
                              do_constant_folding=False, input_names=["ids"])
    finally:
        logging.disable(logging.NOTSET)
    pg = gc.compile(str(path))
    assert _count_role(pg, "token") == VOCAB
    assert_isomorphic(pg, gc.compile(model, (ids,)))
    gc.check_symmetry(str(path), {"ids": ids.numpy()}, trials=3)


class Bags(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.bag, self.out = nn.EmbeddingBag(10, 4, mode=mode), nn.Linear(4, 2)

    def forward(self, tokens):
        return self.out(torch.relu(self.bag(tokens)))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_passes_every_oracle_and_its_mode_is_in_the_graph(mode):
    from gmn_compiler import canonical
    from gmn_compiler.testing import assert_oracles

    tokens = torch.randint(0, 10, (3, 5))
    graph = assert_oracles(Bags(mode), (tokens,))
    others = [m for m in ("sum", "mean", "max") if m != mode]
    torch.manual_seed(0)
    reference = Bags(mode)
    for other in others:
        model = Bags(other)
        model.load_state_dict(reference.state_dict())
        assert not canonical.isomorphic(gc.compile(reference.eval(), (tokens,)), gc.compile(model.eval(), (tokens,)))
    assert graph.data.edge_param.ge(0).sum() == sum(p.numel() for p in Bags(mode).parameters())


def test_embedding_bag_with_per_sample_weights_is_refused():
    class Weighted(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = nn.EmbeddingBag(10, 4, mode="sum")

        def forward(self, tokens, weights):
            return self.bag(tokens, per_sample_weights=weights)

    with pytest.raises(gc.UnsupportedOpsError, match="per_sample_weights"):
        gc.compile(Weighted(), (torch.randint(0, 10, (3, 5)), torch.rand(3, 5)))


class DecomposedRelPos(nn.Module):
    """MViT-v2 / ViTDet's decomposed relative positions: each query's features meet a learned
    table of per-distance vectors, ``einsum("bhwc,hkc->bhwk", q, table[dist])``, a contraction
    of an activation with a parameter table read as a tensor (``param_value``)."""

    def __init__(self, flip: bool = False, size: int = 3, dim: int = 4):
        super().__init__()
        self.size = size
        self.q, self.v, self.out = nn.Linear(2, dim), nn.Linear(2, dim), nn.Linear(dim, 2)
        self.rel = nn.Parameter(torch.randn(2 * size - 1, dim))
        i = torch.arange(size)
        dist = (i.view(-1, 1) - i.view(1, -1)) * (-1 if flip else 1) + size - 1
        self.register_buffer("dist", dist, persistent=False)

    def forward(self, x):  # x: [B, H, W, 2] with H = W = size
        b, n = x.shape[0], self.size * self.size
        q, v = self.q(x), self.v(x).reshape(b, n, -1)
        rel = torch.einsum("bhwc,hkc->bhwk", q, self.rel[self.dist])  # [B, H, W, K]
        scores = (q.reshape(b, n, -1) @ q.reshape(b, n, -1).transpose(1, 2)).view(b, self.size, self.size, self.size, self.size)
        attn = torch.softmax((scores + rel.unsqueeze(-1)).reshape(b, n, n), dim=-1)
        return self.out(attn @ v)


def test_a_parameter_table_contracted_with_queries_passes_every_oracle():
    torch.manual_seed(0)
    x = (torch.randn(1, 3, 3, 2),)
    model = DecomposedRelPos().eval()
    graph = assert_oracles(model, x, trials=3)
    table = [p.name for p in graph.params].index("rel")
    assert int((graph.data.edge_param == table).sum()) == 3 * 3 * 4  # one edge per (query row, distance, dim)
    flipped = DecomposedRelPos(flip=True).eval()  # the same table read at mirrored distances
    flipped.load_state_dict(model.state_dict())
    assert not torch.allclose(model(*x), flipped(*x))
    assert not gc.canonical.isomorphic(graph, gc.compile(flipped, x))


class PaddedPositions(nn.Module):
    """RoBERTa's position ids: counted along the sequence over non-padding tokens only
    (``ne``, ``cumsum``, ``mul``, ``add`` on the token ids): integer arithmetic on the model
    input, with no neurons of its own. ``mask_output``: the padding is also masked out of
    the output, by a float mask of unknown value."""

    def __init__(self, mask_output: bool = False):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, DIM, padding_idx=PAD), nn.Embedding(SEQ + PAD + 1, DIM)
        self.out = nn.Linear(DIM, 3)
        self.mask_output = mask_output

    def forward(self, ids):
        mask = ids.ne(PAD).int()
        positions = torch.cumsum(mask, dim=1) * mask + PAD
        h = self.out(torch.tanh(self.tok(ids) + self.pos(positions)))
        return h * mask.unsqueeze(-1).float() if self.mask_output else h


class IndexFromNeurons(nn.Module):
    """A table row chosen by an argmax over hidden units: an integer that depends on the
    weights, not on the input alone."""

    def __init__(self):
        super().__init__()
        self.tok, self.score, self.table = nn.Embedding(VOCAB, DIM), nn.Linear(DIM, 4), nn.Embedding(4, DIM)

    def forward(self, ids):
        h = self.tok(ids)
        return h + self.table(self.score(h).argmax(-1))


def _padded_ids() -> torch.Tensor:
    ids = torch.randint(PAD + 1, VOCAB, (1, SEQ))
    ids[0, -2:] = PAD
    return ids


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_position_ids_computed_from_token_ids_are_data(dynamo, tmp_path):
    torch.manual_seed(0)
    model, ids = PaddedPositions().eval(), _padded_ids()
    path = tmp_path / "padded.onnx"
    export_onnx(model, ids, path, "ids", dynamo)
    pg = gc.compile(str(path))
    assert_isomorphic(pg, gc.compile(model, (ids,)))
    gc.check_symmetry(str(path), {"ids": ids.numpy()}, trials=3)


def test_onnx_output_masked_by_token_ids_passes_the_oracles(tmp_path):
    """The mask's value is unknown at compile time: like the torch frontend, the graph names
    the op that reads it (so another mask is never taken for it), which is why its edges'
    values differ from the torch graph's; the structure is the same."""
    torch.manual_seed(0)
    model, ids = PaddedPositions(mask_output=True).eval(), _padded_ids()
    path = tmp_path / "masked.onnx"
    export_onnx(model, ids, path, "ids", dynamo=False)
    pg, reference = gc.compile(str(path)), gc.compile(model, (ids,))
    assert torch.equal(pg.data.edge_attr[:, 1:].sort(0).values, reference.data.edge_attr[:, 1:].sort(0).values)
    assert torch.equal(pg.data.x.sort(0).values, reference.data.x.sort(0).values)
    gc.check_symmetry(str(path), {"ids": ids.numpy()}, trials=3)


def test_onnx_integers_computed_from_neurons_are_not_data(tmp_path):
    torch.manual_seed(0)
    model, ids = IndexFromNeurons().eval(), _padded_ids()
    path = tmp_path / "argmax.onnx"
    export_onnx(model, ids, path, "ids", dynamo=False)
    with pytest.raises(gc.CompileError, match="ArgMax"):
        gc.compile(str(path))


class TokenGatedUnits(nn.Module):
    """Hidden unit ``k`` kept only at tokens whose id is ``k`` modulo 6: a mask computed from
    the token ids that varies along the hidden units, so it tells them apart."""

    def __init__(self):
        super().__init__()
        self.tok, self.l1, self.out = nn.Embedding(VOCAB, DIM), nn.Linear(DIM, 6), nn.Linear(6, 2)

    def forward(self, ids):
        gate = nn.functional.one_hot(ids % 6, 6).float()
        return self.out(torch.tanh(self.l1(self.tok(ids))) * gate)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_data_that_varies_along_hidden_units_pins_them(dynamo, tmp_path):
    torch.manual_seed(0)
    model, ids = TokenGatedUnits().eval(), _padded_ids()
    path = tmp_path / "gated.onnx"
    export_onnx(model, ids, path, "ids", dynamo)
    report = gc.check_symmetry(str(path), {"ids": ids.numpy()}, trials=3)
    # only the embedding's 6 dimensions move (6! automorphisms); l1's units are pinned
    assert [s.split(" at ")[0] for s in report.symmetries_checked] == ["embedding dimensions"]
    assert report.proof.endswith("all 720 automorphisms (|A| |A_S| = |A_B| |A_P|)")
    assert gc.compile(str(path)).data.num_nodes == gc.compile(model, (ids,)).data.num_nodes
