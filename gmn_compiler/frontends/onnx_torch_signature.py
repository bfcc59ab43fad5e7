"""What torch's ONNX exporter says about its initializers.

``torch.onnx.export(dynamo=True)`` (the default exporter) declares each parameter and buffer of
the torch model in ``value_info`` metadata (:data:`TORCH_INPUT_KIND`: ``PARAMETER`` or
``BUFFER``; :data:`TORCH_PERSISTENT` for buffers). Its optimizer (on by default) turns the
``Constant`` nodes of the model's Python scalars into 0-d initializers that it does not declare.
Other producers declare nothing; their float initializers are all weights.
"""

from __future__ import annotations

import onnx

TORCH_INPUT_KIND = "pkg.torch.export.graph_signature.InputSpec.kind"
TORCH_PERSISTENT = "pkg.torch.export.graph_signature.InputSpec.persistent"


def torch_declared_constants(graph: onnx.GraphProto) -> set[str]:
    """Names of the float initializers that torch's exporter marks as constants of the torch
    model, not weights. Only a file that declares its torch export signature (some
    initializer's ``value_info`` carries :data:`TORCH_INPUT_KIND`) says so; for it these are

    - undeclared 0-d initializers: the Python scalars its optimizer lifted out of ``Constant``
      nodes (a 0-d torch parameter or buffer is declared; folded or fused weights keep rank
      >= 1, so they are not taken for constants);
    - buffers declared non-persistent (rotary inverse frequencies, cached tables), which the
      torch frontend reads as constants too.

    Any other file: the empty set (every float initializer is a parameter)."""
    declared: dict[str, dict[str, str]] = {}
    for info in graph.value_info:
        props = {p.key: p.value for p in info.metadata_props}
        if TORCH_INPUT_KIND in props:
            declared[info.name] = props
    if not declared:
        return set()
    constants = set()
    for init in graph.initializer:
        props = declared.get(init.name)
        if props is None and len(init.dims) == 0:
            constants.add(init.name)
        elif props is not None and props[TORCH_INPUT_KIND] == "BUFFER" and props.get(TORCH_PERSISTENT) == "False":
            constants.add(init.name)
    return constants
