"""The hand-over contract: feature columns of a compiled graph and their vocabularies.

Schema v2 keeps a graph in a compact form (:mod:`gmn_compiler.blocks`: node columns, the
parameter tensors, edge blocks; on disk :mod:`gmn_compiler.graph_file`) and hands consumers,
on demand (``ParameterGraph.data``), a plain ``torch_geometric.data.Data`` with

- ``x``: float ``[N, len(NODE_COLUMNS)]``, one row per node, columns ``NODE_COLUMNS``;
- ``edge_index``: long ``[2, E]``, row 0 source, row 1 target;
- ``edge_attr``: float ``[E, len(EDGE_COLUMNS)]``, columns ``EDGE_COLUMNS``;
  ``edge_attr[:, 0]`` is the parameter value (structural edges carry their constant);
- ``edge_param``: long ``[E]``, index into the parameter table (-1 for structural edges);
- ``edge_offset``: long ``[E]``, flat offset into that parameter (-1 for structural edges);
- ``num_nodes``.

Schema v2 changed the storage (edge blocks instead of per-edge tensors; safetensors files) and
added the node column ``signature``: an elementwise function with unusual hyper-parameters
marks its input's nodes in place (when it is their only consumer) with the identifier of those
hyper-parameters, where v1 made a copy of the nodes fed by edges carrying the code. v1 files
load converted (their ``signature`` column 0).

Categorical columns (node ``role``, node ``activation``, edge ``type``) hold the integer code
of a vocabulary entry (stored as float so that one tensor holds all features). Integer columns
use -1 for "not applicable". The built-in vocabularies below have stable codes within a schema
version: new entries are only ever appended. Vocabularies are *open*: a plugin registers new
names (``Registrar.add_node_role`` / ``add_activation`` / ``add_edge_type``), which get the
codes after the built-ins in registration order; a graph therefore carries the
:class:`Vocabulary` it was compiled with (``ParameterGraph.vocabulary``, stored in its file),
and :meth:`Vocabulary.translate` maps a graph's codes into another vocabulary by name (names
the target lacks become -1, the "unknown" code every consumer accepts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # torch is imported where codes are translated: the CLI's --help stays light
    import torch
    from torch_geometric.data import Data

SCHEMA_VERSION = 2

SAME_COLUMNS_AS: dict[int, tuple[int, ...]] = {2: (2,)}
"""Schema versions whose materialised ``Data`` columns and codes equal this version's: a model
trained on graphs of any of them reads this version's graphs unchanged. v2 added the node
column ``signature`` (v1 graphs load with it 0 and with their extra copy nodes; a model
trained on v1 graphs does not read v2 graphs)."""


def reads_columns_of(version: int) -> bool:
    """True when graphs of schema ``version`` have the columns of :data:`SCHEMA_VERSION`."""
    return version in SAME_COLUMNS_AS.get(SCHEMA_VERSION, (SCHEMA_VERSION,))

NODE_COLUMNS: tuple[str, ...] = ("role", "depth", "position", "activation", "signature")
"""role: NODE_ROLES code; depth: number of node-creating ops on the longest path from an
input; position: fixed position of model input/output nodes, -1 for permutable nodes;
activation: ACTIVATIONS code of the elementwise function applied at the node; signature: an
identifier (1 .. 2**20, :func:`gmn_compiler.layout.signature_id`) of that function's
hyper-parameters when they are not its usual ones (a leaky slope, a sine's frequency, a
softmax axis, a pooling window), 0 otherwise -- an identifier, not a magnitude: equal
hyper-parameters, equal identifiers."""

EDGE_COLUMNS: tuple[str, ...] = ("value", "type", "kernel0", "kernel1", "kernel2", "spatial")
"""value: the parameter value or structural constant; type: EDGE_TYPES code; kernel0..2:
kernel index per spatial dimension of a convolution weight (-1 when unused); spatial: flat
position along free (weight-shared) axes that the parameter varies over, e.g. the (h, w)
position of a conv feature map flattened into a linear layer (-1 when none)."""

NODE_ROLES: tuple[str, ...] = (
    "input",  # an entry of a model input's neuron axis
    "neuron",  # a hidden or output neuron / channel created by an op
    "bias",  # one per layer, feeds the layer's biases
    "norm_weight",  # gamma of a normalisation layer
    "norm_bias",  # beta of a normalisation layer
    "running_mean",
    "running_var",
    "group",  # one per GroupNorm / grouped-conv group
    "param_operand",  # a parameter used as an activation operand (layer scale, pos. table)
    "tie",  # ties the node sets of the uses of a shared parameter
    "head",  # one per attention head
    "token",  # one per vocabulary entry of an embedding table (fixed position = its index)
    "signature",  # one per op whose hyper-parameters (conv stride/padding/dilation) are not
    # visible otherwise; its ``signature`` edges into the op's output nodes carry their code
)

ACTIVATIONS: tuple[str, ...] = (
    "none", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "gelu_tanh",
    "silu", "mish", "tanh", "sigmoid", "hardtanh", "hardswish", "hardsigmoid", "softplus",
    "sin", "cos", "exp", "log", "abs", "neg", "sqrt", "rsqrt", "square", "reciprocal",
    "softmax", "log_softmax", "layer_norm", "instance_norm", "avg_pool", "max_pool",
    "clamp", "sign", "erf", "logsigmoid", "softsign", "tanhshrink", "prelu", "identity",
    "sum_pool", "group_norm", "rms_norm", "masked",
)

EDGE_TYPES: tuple[str, ...] = (
    "linear", "linear_bias",
    "conv", "conv_bias", "conv_transpose", "conv_transpose_bias",
    "bn_weight", "bn_bias", "bn_mean", "bn_var",
    "ln_weight", "ln_bias",
    "gn_weight", "gn_bias", "gn_member",
    "in_weight", "in_bias", "in_mean", "in_var",
    "add", "sub_lhs", "sub_rhs", "mul", "div_num", "div_den", "max", "min",
    "scalar_add", "scalar_mul", "scalar_sub", "scalar_rsub", "scalar_div", "scalar_rdiv",
    "scalar_pow",
    "activation",  # one-to-one edge into fresh nodes that carry the activation feature
    "pool",  # one-to-one edge into the fresh output nodes of a pooling / reduction
    "param_add", "param_mul", "param_sub_lhs", "param_sub_rhs", "param_div_num", "param_div_den",
    "tie",
    "head_member",
    "group_conv_member",
    "contract",  # q -> k: the two entries a contraction over a neuron axis multiplies
    "copy",  # one-to-one copy into fresh nodes (e.g. a K/V head read by several query heads)
    "embedding",  # token -> embedding dim, carrying the table entry
    "rms_weight",
    "param_cat",  # a parameter concatenated to an activation along a free axis (class token)
    "signature",  # signature node -> output node; value: a code identifying the op's hyper-parameters
)


CATEGORICAL: dict[str, tuple[str, int]] = {
    "node_roles": ("node", NODE_COLUMNS.index("role")),
    "activations": ("node", NODE_COLUMNS.index("activation")),
    "edge_types": ("edge", EDGE_COLUMNS.index("type")),
}
"""Each vocabulary -> (the tensor it codes: ``"node"`` = ``x``, ``"edge"`` = ``edge_attr``, its column)."""

BUILTIN_NAMES: dict[str, tuple[str, ...]] = {
    "node_roles": NODE_ROLES, "activations": ACTIVATIONS, "edge_types": EDGE_TYPES}


@dataclass(frozen=True)
class Vocabulary:
    """The names behind the categorical columns of a graph: code ``i`` of a column is
    ``names[i]``. The built-ins come first with their fixed codes; extensions follow."""

    node_roles: tuple[str, ...] = NODE_ROLES
    activations: tuple[str, ...] = ACTIVATIONS
    edge_types: tuple[str, ...] = EDGE_TYPES

    def __post_init__(self) -> None:
        for field_name in CATEGORICAL:
            names = getattr(self, field_name)
            builtin = BUILTIN_NAMES[field_name]
            if tuple(names[:len(builtin)]) != builtin:
                raise ValueError(f"vocabulary {field_name} must start with the built-in names in "
                                 "their order (codes of the built-ins are stable)")
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"vocabulary {field_name} names {dup} twice")

    def extended(self, *, node_roles: Iterable[str] = (), activations: Iterable[str] = (),
                 edge_types: Iterable[str] = ()) -> "Vocabulary":
        """This vocabulary with new names appended (ValueError on a name already present)."""
        return Vocabulary(self.node_roles + tuple(node_roles), self.activations + tuple(activations),
                          self.edge_types + tuple(edge_types))

    def names(self, vocabulary: str) -> tuple[str, ...]:
        """The names of ``vocabulary`` (``"node_roles"``, ``"activations"`` or ``"edge_types"``)."""
        if vocabulary not in CATEGORICAL:
            raise ValueError(f"unknown vocabulary {vocabulary!r}; choose from {sorted(CATEGORICAL)}")
        return getattr(self, vocabulary)

    def size(self, vocabulary: str) -> int:
        return len(self.names(vocabulary))

    def code(self, vocabulary: str, name: str) -> int:
        """The code of ``name``; ValueError saying which plugin API registers new names."""
        names = self.names(vocabulary)
        try:
            return names.index(name)
        except ValueError:
            raise ValueError(f"{name!r} is not in the {vocabulary} vocabulary; a plugin registers a new "
                             f"name with Registrar.add_{vocabulary[:-1]}({name!r})") from None

    def extensions(self) -> dict[str, list[str]]:
        """The names beyond the built-ins, per vocabulary."""
        return {v: list(getattr(self, v)[len(BUILTIN_NAMES[v]):]) for v in CATEGORICAL}

    def translation(self, vocabulary: str, target: "Vocabulary") -> torch.Tensor:
        """Long ``[size]``: the target's code of each of this vocabulary's names (-1 where the
        target lacks the name)."""
        import torch

        index = {n: i for i, n in enumerate(target.names(vocabulary))}
        return torch.tensor([index.get(n, -1) for n in self.names(vocabulary)], dtype=torch.long)

    def translate_columns(self, x: torch.Tensor, edge_attr: torch.Tensor,
                          target: "Vocabulary") -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` and ``edge_attr`` (copies; the inputs themselves when ``target`` equals this
        vocabulary) with every categorical code mapped into ``target``
        by name; codes outside this vocabulary (already unknown) become -1 too."""
        import torch

        if target == self:
            return x, edge_attr
        out = {"node": x.clone(), "edge": edge_attr.clone()}
        for vocabulary, (which, column) in CATEGORICAL.items():
            table = self.translation(vocabulary, target)
            codes = out[which][:, column].long()
            known = (codes >= 0) & (codes < table.numel())
            mapped = torch.full_like(codes, -1)
            mapped[known] = table[codes[known]]
            out[which][:, column] = mapped.to(out[which].dtype)
        return out["node"], out["edge"]

    def translate(self, data: "Data", target: "Vocabulary") -> "Data":
        """A PyG graph ``data`` (codes of this vocabulary) with its categorical codes mapped into
        ``target`` by name (:meth:`translate_columns`): ``data`` itself when ``target`` equals
        this vocabulary, else a copy (``data`` is not changed)."""
        if target == self:
            return data
        out = data.clone()
        out.x, out.edge_attr = self.translate_columns(data.x, data.edge_attr, target)
        return out

    def to_dict(self) -> dict[str, list[str]]:
        return {v: list(getattr(self, v)) for v in CATEGORICAL}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        """Inverse of :meth:`to_dict` (missing entries: the built-ins)."""
        return cls(**{v: tuple(d.get(v, BUILTIN_NAMES[v])) for v in CATEGORICAL})


BUILTIN = Vocabulary()
"""The built-in vocabulary (what a graph uses when no plugin registered names)."""


def code(vocabulary: tuple[str, ...], name: str) -> int:
    """The integer code of ``name`` in ``vocabulary``; ValueError naming the vocabulary."""
    try:
        return vocabulary.index(name)
    except ValueError:
        raise ValueError(f"{name!r} is not in the schema vocabulary {vocabulary!r}") from None


def node_column(name: str) -> int:
    return NODE_COLUMNS.index(name)


def edge_column(name: str) -> int:
    return EDGE_COLUMNS.index(name)


def describe(vocabulary: Vocabulary | None = None) -> dict:
    """The whole schema as plain data (saved alongside every graph), with ``vocabulary``'s
    names (default: the built-ins)."""
    return {
        "version": SCHEMA_VERSION,
        "node_columns": list(NODE_COLUMNS),
        "edge_columns": list(EDGE_COLUMNS),
        **(vocabulary or BUILTIN).to_dict(),
    }
