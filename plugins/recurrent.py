"""Recurrent layers: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` (ATen ``lstm`` / ``gru`` /
``rnn_tanh`` / ``rnn_relu``: multi-layer, bidirectional, batch first or not).

A layer (one direction of one layer) has one node per hidden unit, marked with its cell
(``lstm``, ``gru``, ``rnn_tanh``, ``rnn_relu``). Every parameter entry is one edge:

- ``weight_ih[g·H + j, k]``: input ``k`` -> unit ``j``, type ``rnn_ih``;
- ``weight_hh[g·H + j, k]``: unit ``k`` -> unit ``j`` (the recurrence: edges inside the layer,
  self-loops included), type ``rnn_hh``;
- ``bias_ih`` / ``bias_hh``: a bias node -> unit ``j``, types ``rnn_bias_ih`` / ``rnn_bias_hh``
  (kept apart: in a GRU ``bias_hh`` of the new gate sits inside the reset product);

with the gate ``g`` in ``kernel0`` (torch's order: LSTM i, f, g, o; GRU r, z, n), the
direction (0 forward, 1 reverse) in ``kernel1``, and on the input edges the input's time axis
(0, or 1 for batch first) in ``kernel2``: the same tensor read batch first is another function. An automorphism can therefore move a hidden
unit only with all its gate rows, its recurrent row and column and its biases together — the
true symmetry, declared per layer and direction — and never a gate or a direction on its own.
A bidirectional layer's output is the forward units then the reverse units, read by the next
layer's ``weight_ih``. The final states ``h_n`` (and the LSTM's ``c_n``) get nodes of their own
(marked ``rnn_state_h`` / ``rnn_state_c``, one-to-one ``rnn_state`` edges from their units): a
state is a different function of a unit than its output sequence.

Refused with a clear message: initial states other than zeros, training mode, LSTM projections
(``proj_size``).
"""

from __future__ import annotations

from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, Unsupported, Value, hookimpl, layout as L

_Normalized = tuple[list[Any], dict[str, Any]]
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
EDGE_TYPES = ("rnn_ih", "rnn_hh", "rnn_bias_ih", "rnn_bias_hh", "rnn_state")


def lower_rnn(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x, states (list), params (list)]``; attrs ``cell``, ``num_layers``,
    ``bidirectional``, ``batch_first``, ``has_biases``; params in torch's order (per layer,
    per direction: ``weight_ih, weight_hh[, bias_ih, bias_hh]``)."""
    x, states, params = op.inputs
    cell, layers = op.attrs["cell"], int(op.attrs["num_layers"])
    ways = op.attrs.get("directions") or ([0, 1] if op.attrs["bidirectional"] else [0])
    directions = len(ways)
    per_layer = 4 if op.attrs["has_biases"] else 2
    _check_states(ctx, states)
    if len(params) != layers * directions * per_layer or not all(isinstance(p, ParamRef) for p in params):
        raise ctx.error(f"{cell}: expected {layers * directions * per_layer} parameters "
                        "(LSTM projections, proj_size > 0, are not supported)")
    try:
        inputs, positions = L.axis_entries(ctx.require_layout(x), x.shape, -1)
    except ValueError as exc:
        raise ctx.error(f"{cell} input {x}: {exc}") from None
    finals: list[torch.Tensor] = []
    for layer in range(layers):
        units = []
        for direction in range(directions):
            first = (layer * directions + direction) * per_layer
            hidden = _emit_layer(ctx, cell, params[first:first + per_layer], inputs, positions, ways[direction],
                                 int(op.attrs["batch_first"]))
            ctx.declare_symmetry(hidden, f"hidden units of {cell} layer {layer}" + (" (reverse)" if ways[direction] else ""))
            units.append(hidden)
            finals.append(hidden)
        inputs, positions = torch.cat(units), None
    outputs = op.outputs
    sequence = outputs[0]
    axis = op.attrs.get("direction_axis")
    if axis is None:  # torch: [..., directions · H]
        ctx.set_layout(sequence, L.for_axis(inputs, len(sequence.shape), -1))
    else:  # ONNX: directions on an axis of their own, [T, D, B, H] or [B, T, D, H]
        shape = [1] * len(sequence.shape)
        shape[axis], shape[-1] = directions, inputs.numel() // directions
        ctx.set_layout(sequence, L.Layout(inputs.view(shape)))
    for k, value in enumerate(outputs[1:]):
        ctx.set_layout(value, _final_state(ctx, finals, "c" if k == 1 else "h", value))


def _emit_layer(ctx: LoweringContext, cell: str, params: list[ParamRef], inputs: torch.Tensor,
                positions: torch.Tensor | None, direction: int, time_axis: int) -> torch.Tensor:
    """One direction of one layer: its hidden units and one edge per parameter entry (the
    input's time axis, 0 or 1, in ``kernel2`` of the input edges)."""
    w_ih, w_hh, *biases = params
    gates, n_in = GATES[cell], inputs.numel()
    size = w_hh.shape[1]
    if tuple(w_ih.shape) != (gates * size, n_in) or tuple(w_hh.shape) != (gates * size, size):
        raise ValueError(f"{cell} weights {list(w_ih.shape)}, {list(w_hh.shape)} do not fit {n_in} inputs")
    depth = ctx.depth_of(inputs) + 1
    hidden = ctx.add_nodes(size, "neuron", depth, cell)
    rows = hidden.repeat(gates).view(-1, 1)  # row g·H + j of every matrix ends at unit j
    gate = torch.arange(gates).repeat_interleave(size).view(-1, 1)
    way = torch.full((1, 1), direction)
    ctx.add_edges((gates * size, n_in), inputs.view(1, -1), rows, "rnn_ih", param=w_ih,
                  kernel=(gate, way, torch.full((1, 1), time_axis)),
                  spatial=None if positions is None else positions.view(1, -1))
    ctx.add_edges((gates * size, size), hidden.view(1, -1), rows, "rnn_hh", param=w_hh, kernel=(gate, way))
    for etype, bias in zip(("rnn_bias_ih", "rnn_bias_hh"), biases):
        node = ctx.add_nodes(1, "bias", depth)
        ctx.add_edges((gates * size,), node, rows.view(-1), etype, param=bias, kernel=(gate.view(-1), way.view(-1)))
    return hidden


def _final_state(ctx: LoweringContext, finals: list[torch.Tensor], which: str, value: Value) -> L.Layout:
    """``h_n`` / ``c_n`` (``[layers · directions, B, H]``): new nodes per unit (one deeper than
    their unit), linked one-to-one."""
    states = []
    for units in finals:
        found = ctx.add_nodes(units.numel(), "neuron", ctx.depth_of(units) + 1, f"rnn_state_{which}")
        ctx.add_edges((units.numel(),), units, found, "rnn_state", value=1.0 if which == "h" else 2.0)
        ctx.note_copies(found, units)
        states.append(found)
    shape = [1] * len(value.shape)
    shape[0], shape[-1] = len(states), states[0].numel()
    return L.Layout(torch.stack(states).view(shape))


def _check_states(ctx: LoweringContext, states: list[Any]) -> None:
    for state in states:
        if state is None:  # not given: zeros
            continue
        if isinstance(state, Value):
            constant = state.constant
        elif isinstance(state, ParamRef) and state.kind == "constant":
            constant = state.tensor
        elif isinstance(state, (int, float)):  # a one-entry ONNX constant
            constant = torch.tensor(float(state))
        else:
            constant = None
        if constant is None or bool(constant.any()):
            raise ctx.error("recurrent layers are supported with zero initial states only (the default); "
                            "an initial state given by the model is not")


# ------------------------------------------------------------------ ATen signatures
def _torch(cell: str) -> Any:
    def normalize(x: Any, hx: Any, params: Any, has_biases: bool, num_layers: int, dropout: float, train: bool,
                  bidirectional: bool, batch_first: bool) -> _Normalized:
        if train:
            raise Unsupported(f"{cell} in training mode")
        states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
        return [x, states, list(params)], {"cell": cell, "num_layers": num_layers, "bidirectional": bidirectional,
                                           "batch_first": batch_first, "has_biases": has_biases}
    return normalize


# ------------------------------------------------------------------ ONNX
# rows of ONNX's gate blocks in torch's gate order: LSTM i o f c -> i f c(g) o; GRU z r h -> r z n
_ONNX_GATE_ORDER = {"lstm": [0, 2, 3, 1], "gru": [1, 0, 2], "rnn_tanh": [0], "rnn_relu": [0]}
_ONNX_DEFAULT_ACTIVATIONS = {"lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"]}


def _onnx(op_type: str) -> Any:
    def normalize(x: Any, w: Any, r: Any, b: Any = None, sequence_lens: Any = None, initial_h: Any = None,
                  initial_c: Any = None, p: Any = None, *, hidden_size: int, direction: str = "forward",
                  activations: list[str] | None = None, clip: float | None = None, input_forget: int = 0,
                  layout: int = 0, linear_before_reset: int = 0, **rest: Any) -> _Normalized:
        cell = op_type.lower()
        if op_type == "RNN":
            kind = (activations or ["Tanh"])[0]
            if kind not in ("Tanh", "Relu") or len(set(activations or ["Tanh"])) > 1:
                raise Unsupported(f"RNN with activations {activations}")
            cell = "rnn_tanh" if kind == "Tanh" else "rnn_relu"
        elif activations and list(activations[:len(_ONNX_DEFAULT_ACTIVATIONS[cell])]) != _ONNX_DEFAULT_ACTIVATIONS[cell]:
            raise Unsupported(f"{op_type} with activations {activations}")
        if clip is not None or input_forget or p is not None or rest.get("activation_alpha") or rest.get("activation_beta"):
            raise Unsupported(f"{op_type} with clip, input_forget, peepholes or activation parameters")
        if op_type == "GRU" and not linear_before_reset:
            raise Unsupported("GRU with linear_before_reset=0 (torch's GRU applies the reset after the linear map)")
        if sequence_lens is not None:
            raise Unsupported(f"{op_type} with sequence_lens")
        if not all(isinstance(t, ParamRef) for t in (w, r)) or (b is not None and not isinstance(b, ParamRef)):
            raise Unsupported(f"{op_type} with weights computed in the model")
        ways = {"forward": [0], "reverse": [1], "bidirectional": [0, 1]}[direction]
        order, size = _ONNX_GATE_ORDER[cell], int(hidden_size)
        params = []
        for d in range(len(ways)):
            params += [_gate_rows(w, d, order, size, 0), _gate_rows(r, d, order, size, 0)]
            if b is not None:
                params += [_gate_rows(b, d, order, size, 0), _gate_rows(b, d, order, size, len(order) * size)]
        return [x, [initial_h, initial_c], params], {
            "cell": cell, "num_layers": 1, "bidirectional": len(ways) == 2, "batch_first": bool(layout),
            "has_biases": b is not None, "directions": ways, "direction_axis": 2 if layout else 1}
    return normalize


def _gate_rows(ref: ParamRef, direction: int, order: list[int], size: int, start: int) -> ParamRef:
    """Rows ``start .. start + G·H`` of ``ref[direction]`` with the gate blocks in torch's order."""
    index = torch.cat([torch.arange(g * size, (g + 1) * size) for g in order]) + start
    return ref.apply(lambda t: t[direction].index_select(0, index))


@hookimpl
def gmn_register(registry: Registrar) -> None:
    for name in EDGE_TYPES:
        registry.add_edge_type(name)
    for name in (*GATES, "rnn_state_h", "rnn_state_c"):
        registry.add_activation(name)
    registry.add_rule("rnn", lower_rnn, inputs=("x", "states", "params"),
                      attributes=("cell", "num_layers", "bidirectional", "batch_first", "has_biases", "directions",
                                  "direction_axis"), input_axis=-1)
    for cell in GATES:
        registry.map_aten(f"aten.{cell}.input", "rnn", _torch(cell))
    for op_type in ("LSTM", "GRU", "RNN"):
        registry.map_onnx(op_type, "rnn", _onnx(op_type))
