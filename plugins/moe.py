"""Sparse mixtures of experts (Mixtral, Qwen3-MoE), matched at the module level.

What a token meets is data-dependent (``topk`` over the router's probabilities, then tokens
sorted by expert), but the function is not: it is ``out = sum_e w_e(x) * down_e(act(gate_e x)
* up_e x)`` where ``w`` is the router's softmax kept on its top ``k`` experts (renormalised
over them or not) and zero elsewhere. Its exact symmetries are permuting the experts together
with the router's rows, and permuting the hidden units inside each expert (with their gate, up
and down weights).

The graph of one block, on input nodes ``D``:

- one ``neuron`` node per expert ``R[e]`` (activation ``moe_router``, named by ``k`` and the
  renormalisation in its node signature), a ``linear`` edge per router weight from ``D``;
- per expert and hidden unit ``i``: a gate node ``G[e, i]`` (the experts' activation), an up
  node ``U[e, i]`` (``linear`` edges from ``D``), and their product ``P[e, i]`` (two ``mul``
  edges) scaled by its expert's routing weight (a ``moe_gate`` edge from ``R[e]``: the
  weight multiplies the expert's hidden units, which is the same as multiplying its output,
  since ``down_e`` is linear);
- one output node per entry of ``D``, a ``linear`` edge per down weight from every ``P[e, i]``.

So an automorphism can move a hidden unit only with its expert's router node, and a router
node only with its whole expert. Declared: the hidden units within each expert, and whole
experts (``permute_groups``); the oracle checks both by running the model.

The block is read off the module object (``top_k``, the renormalisation flag, the experts'
activation): compiling an ``ExportedProgram`` (no module objects) is refused in one line, as
is a block with parts this rule does not know (a shared expert, a bias, a router other than a
linear layer). Blocks with other class names but this structure register with
:func:`register_sparse_moe`.
"""

from __future__ import annotations

from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, hookimpl, layout as L

# the experts' activation modules (transformers' ACT2FN classes and torch's), by class name (torch's
# GELU also by its approximation: see _activation_key)
_ACTIVATIONS = {"SiLUActivation": "silu", "SiLU": "silu", "GELUActivation": "gelu", "GELU": "gelu",
                "GELU(approximate=tanh)": "gelu_tanh", "NewGELUActivation": "gelu_tanh", "GELUTanh": "gelu_tanh",
                "ReLU": "relu", "Tanh": "tanh"}
_PARAMS = {"gate.weight", "experts.gate_up_proj", "experts.down_proj"}
BLOCKS = ("transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock",
          "transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock")


def sparse_moe_attrs(module: Any) -> dict[str, Any]:
    """What the rule reads off a block: ``top_k``, ``renormalise`` (the kept probabilities
    divided by their sum), the experts' activation (its class name) and the block's parameter
    names."""
    gate, experts = getattr(module, "gate", None), getattr(module, "experts", None)
    return {"top_k": getattr(gate, "top_k", None), "renormalise": bool(getattr(gate, "norm_topk_prob", True)),
            "activation": _activation_key(getattr(experts, "act_fn", None)),
            "params": tuple(sorted(name for name, _ in module.named_parameters()))}


def _activation_key(act: Any) -> str:
    """The activation module's class name, with torch ``GELU``'s approximation when it has one
    (``GELU(approximate=tanh)`` is another function than ``GELU``)."""
    name = type(act).__name__
    approximate = getattr(act, "approximate", "none") if isinstance(act, torch.nn.GELU) else "none"
    return name if approximate == "none" else f"{name}(approximate={approximate})"


def lower_sparse_moe(ctx: LoweringContext, op: Op) -> None:
    """A leaf op (see ``Registrar.add_leaf_module``): inputs ``[hidden_states [..., D]]``."""
    found = op.attrs.get("module_attrs")
    if found is None:
        raise ctx.error("a mixture of experts compiles from the nn.Module (its top-k and activation are "
                        "read off it); an exported program keeps no module: compile the model itself")
    if set(found["params"]) != _PARAMS:
        raise ctx.error(f"mixture-of-experts block with parameters {sorted(found['params'])}: only a linear "
                        f"router and gate/up/down experts ({sorted(_PARAMS)}) are supported")
    activation = _ACTIVATIONS.get(found["activation"])
    if activation is None or not isinstance(found["top_k"], int):
        raise ctx.error(f"mixture-of-experts block with activation {found['activation']} and top_k "
                        f"{found['top_k']}: not supported")
    params: dict[str, ParamRef] = op.attrs["params"]
    router, gate_up, down = params["gate.weight"], params["experts.gate_up_proj"], params["experts.down_proj"]
    (x,), (out,) = op.inputs, op.outputs
    try:
        ids, pos = L.axis_entries(ctx.require_layout(x), x.shape, -1)
    except ValueError as exc:
        raise ctx.error(f"the block's input must carry neurons on its last axis only: {exc}") from None
    if pos is not None:
        raise ctx.error("the block's input merges free positions into its neuron axis")
    experts, width = router.shape
    hidden = gate_up.shape[1] // 2
    if gate_up.shape != (experts, 2 * hidden, width) or down.shape != (experts, width, hidden) or x.shape[-1] != width:
        raise ctx.error(f"mixture-of-experts weights of shapes {list(router.shape)}, {list(gate_up.shape)}, "
                        f"{list(down.shape)} on an input of width {x.shape[-1]} do not fit together")
    depth = ctx.depth_of(ids) + 1
    routers = ctx.add_nodes(experts, "neuron", depth, activation="moe_router")
    ctx.set_node_signature(routers, ("moe_router", "top_k", found["top_k"], found["renormalise"]))
    ctx.add_edges((experts, width), ids.view(1, width), routers.view(experts, 1), "linear", param=router)
    gates = ctx.add_nodes(experts * hidden, "neuron", depth, activation=activation).view(experts, hidden)
    ups = ctx.add_nodes(experts * hidden, "neuron", depth).view(experts, hidden)
    for nodes, start in ((gates, 0), (ups, hidden)):
        rows = gate_up.apply(lambda t: t.narrow(1, start, hidden))  # noqa: B023 (applied at once)
        ctx.add_edges((experts, hidden, width), ids.view(1, 1, width), nodes.view(experts, hidden, 1), "linear",
                      param=rows)
    units = ctx.add_nodes(experts * hidden, "neuron", depth + 1).view(experts, hidden)
    for nodes in (gates, ups):
        ctx.add_edges((experts * hidden,), nodes.reshape(-1), units.reshape(-1), "mul")
        ctx.tie_units(nodes.reshape(-1), units.reshape(-1))
    ctx.add_edges((experts, hidden), routers.view(experts, 1), units, "moe_gate")
    outs = ctx.add_nodes(width, "neuron", depth + 2)
    ctx.add_edges((experts, width, hidden), units.view(experts, 1, hidden), outs.view(1, width, 1), "linear",
                  param=down)
    for nodes, what in ((gates, "gate"), (ups, "up")):  # the products are tied to both
        ctx.declare_symmetry(nodes.reshape(-1), f"hidden units within each expert ({what}); whole experts with "
                             "their router row", groups=experts, permute_groups=True)
    ctx.declare_symmetry(outs, "outputs of a mixture of experts")
    ctx.set_layout(out, L.for_axis(outs, len(out.shape), -1))


def register_sparse_moe(registry: Registrar, module_type: type | str) -> None:
    """Compile every call of ``module_type`` (a block laid out as Mixtral's: ``gate.weight``
    ``[E, D]`` with ``gate.top_k``, ``experts.gate_up_proj`` ``[E, 2I, D]``,
    ``experts.down_proj`` ``[E, D, I]``, ``experts.act_fn``) with :func:`lower_sparse_moe`."""
    registry.add_leaf_module(module_type, "sparse_moe", module_attrs=sparse_moe_attrs)


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_activation("moe_router")
    registry.add_edge_type("moe_gate")
    registry.add_rule("sparse_moe", lower_sparse_moe, inputs=("hidden_states",))
    for block in BLOCKS:
        register_sparse_moe(registry, block)

