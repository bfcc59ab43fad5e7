"""The hand-over contract: feature columns of a compiled graph and their vocabularies.

A compiled graph is a plain ``torch_geometric.data.Data`` with

- ``x``: float ``[N, len(NODE_COLUMNS)]``, one row per node, columns ``NODE_COLUMNS``;
- ``edge_index``: long ``[2, E]``, row 0 source, row 1 target;
- ``edge_attr``: float ``[E, len(EDGE_COLUMNS)]``, columns ``EDGE_COLUMNS``;
  ``edge_attr[:, 0]`` is the parameter value (structural edges carry their constant);
- ``edge_param``: long ``[E]``, index into the parameter table (-1 for structural edges);
- ``edge_offset``: long ``[E]``, flat offset into that parameter (-1 for structural edges);
- ``num_nodes``.

Categorical columns hold the integer code of a vocabulary entry (stored as float so that one
tensor holds all features). Integer columns use -1 for "not applicable". Codes are stable
within a schema version: new entries are only ever appended.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

NODE_COLUMNS: tuple[str, ...] = ("role", "depth", "position", "activation")
"""role: NODE_ROLES code; depth: number of node-creating ops on the longest path from an
input; position: fixed position of model input/output nodes, -1 for permutable nodes;
activation: ACTIVATIONS code of the elementwise function applied at the node."""

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


def describe() -> dict:
    """The whole schema as plain data (saved alongside every graph)."""
    return {
        "version": SCHEMA_VERSION,
        "node_columns": list(NODE_COLUMNS),
        "edge_columns": list(EDGE_COLUMNS),
        "node_roles": list(NODE_ROLES),
        "activations": list(ACTIVATIONS),
        "edge_types": list(EDGE_TYPES),
    }
