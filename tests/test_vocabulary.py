"""Open vocabularies (issue 15): plugins register node roles, activations and edge types; a
graph carries the vocabulary it was compiled with; consumers map codes by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import schema
from gmn_compiler.errors import CompileError, DuplicateRegistrationError, LoweringError, UnsupportedOpsError
from gmn_compiler.rules import hookimpl
from gmn_compiler.testing import assert_oracles, load_registry
from gmn_models.model import GMN, to_vocabulary

from cumsum_plugin import CumsumPlugin, RunningSum

ACT = schema.node_column("activation")


INPUTS = (torch.randn(1, 5, 4),)


@pytest.fixture(scope="module")
def registry():
    return load_registry([CumsumPlugin()], entry_points=False)


@pytest.fixture(scope="module")
def graph(registry):
    torch.manual_seed(0)
    return gc.compile(RunningSum(), INPUTS, registry=registry)


def test_a_plugin_name_gets_the_next_code_and_the_graph_records_it(graph, registry):
    builtin_plugins = load_registry(entry_points=False).vocabulary  # built-in plugins register names too
    assert graph.vocabulary == registry.vocabulary
    assert graph.vocabulary.activations == builtin_plugins.activations + ("cumsum",)
    code = len(builtin_plugins.activations)
    assert graph.vocabulary.code("activations", "cumsum") == code
    assert int((graph.data.x[:, ACT] == code).sum()) == 6  # one fresh node per hidden unit
    assert schema.BUILTIN.code("activations", "relu") == graph.vocabulary.code("activations", "relu")


def test_without_the_plugin_cumsum_is_refused():
    with pytest.raises(UnsupportedOpsError, match="cumsum"):
        gc.compile(RunningSum(), INPUTS, registry=load_registry(entry_points=False))


def test_cumsum_over_neurons_is_refused(registry):
    class OverFeatures(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, dim=-1)

    with pytest.raises(LoweringError, match="mixes neurons in order"):
        gc.compile(nn.Sequential(nn.Linear(4, 3), OverFeatures()), INPUTS, registry=registry)


def test_the_plugin_rule_passes_every_oracle(registry):
    assert_oracles(RunningSum(), INPUTS, registry=registry)


def test_an_unregistered_name_says_how_to_register_it():
    with pytest.raises(ValueError, match=r"add_activation\('cumsum'\)"):
        schema.BUILTIN.code("activations", "cumsum")


def test_registering_a_taken_name_is_refused():
    class Relu:
        __name__ = "relu_again"

        @hookimpl
        def gmn_register(self, registry) -> None:
            registry.add_activation("relu")

    with pytest.raises(DuplicateRegistrationError, match="built in"):
        load_registry([Relu()], entry_points=False)

    class Other(CumsumPlugin):
        __name__ = "other_cumsum"

        @hookimpl
        def gmn_register(self, registry) -> None:
            registry.add_activation("cumsum")

    with pytest.raises(DuplicateRegistrationError, match="cumsum_plugin.*other_cumsum"):
        load_registry([CumsumPlugin(), Other()], entry_points=False)


def test_the_file_keeps_the_vocabulary_and_translation_maps_by_name(graph, tmp_path):
    graph.save(tmp_path / "g.pt")
    back = gc.load(tmp_path / "g.pt")
    assert back.vocabulary == graph.vocabulary and torch.equal(back.data.x, graph.data.x)
    # into the built-ins: the plugin's name becomes "unknown" (-1), the rest keeps its code
    plain = back.translated(schema.BUILTIN)
    cumsum = graph.data.x[:, ACT] == graph.vocabulary.code("activations", "cumsum")
    assert (plain.x[cumsum, ACT] == -1).all()
    assert torch.equal(plain.x[~cumsum], graph.data.x[~cumsum]) and torch.equal(plain.edge_attr, graph.data.edge_attr)
    # into a vocabulary that knows the name under another code: the code follows the name
    other = schema.BUILTIN.extended(activations=["cummax", "cumsum"])
    moved = back.translated(other)
    assert (moved.x[cumsum, ACT] == other.code("activations", "cumsum")).all()


def test_a_file_with_a_foreign_vocabulary_is_refused(graph, tmp_path):
    d = graph.to_dict()
    d["meta"]["schema"]["activations"] = ["relu", "none"] + list(schema.ACTIVATIONS[2:])  # built-ins reordered
    torch.save(d, tmp_path / "bad.pt")
    with pytest.raises(CompileError, match="invalid vocabulary"):
        gc.load(tmp_path / "bad.pt")


def test_a_gmn_reads_names_it_lacks_through_the_unknown_slot(graph):
    torch.manual_seed(0)
    builtin_model = GMN(hidden=8, num_blocks=1, graph_out=1)
    data = to_vocabulary(graph.data, graph.vocabulary, builtin_model.vocabulary)
    assert to_vocabulary(data, schema.BUILTIN, schema.BUILTIN) is data
    # -1 and any other out-of-range code read the same "unknown" row
    far = data.clone()
    far.x[data.x[:, ACT] == -1, ACT] = 999.0
    torch.testing.assert_close(builtin_model(data), builtin_model(far), rtol=0, atol=0)
    # a model built with the graph's vocabulary has a row of its own for the name
    torch.manual_seed(0)
    model = GMN(hidden=8, num_blocks=1, graph_out=1, vocabulary=graph.vocabulary)
    assert model.node_encoder.activation.embedding.num_embeddings == len(graph.vocabulary.activations) + 1
    assert not torch.allclose(model(graph.data), model(to_vocabulary(graph.data, graph.vocabulary, schema.BUILTIN)))
