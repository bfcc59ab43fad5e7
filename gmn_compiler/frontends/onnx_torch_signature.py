"""What torch's ONNX exporter says about its initializers.

``torch.onnx.export(dynamo=True)`` (the default exporter) declares each parameter and buffer of
the torch model in ``value_info`` metadata (:data:`TORCH_INPUT_KIND`: ``PARAMETER`` or
``BUFFER``; :data:`TORCH_PERSISTENT` for buffers). Its optimizer (on by default) turns the
``Constant`` nodes of the model's Python scalars into 0-d initializers that it does not declare.
It also folds constant subgraphs into initializers and records what each was folded from
(:data:`FOLDED_FROM`): a transposed weight lists the parameter's name, an attention mask built
from shapes only lists nodes of the traced graph. Other producers declare nothing; their float
initializers are all weights.
"""

from __future__ import annotations

import ast
import re

import onnx
import torch

TORCH_INPUT_KIND = "pkg.torch.export.graph_signature.InputSpec.kind"
TORCH_PERSISTENT = "pkg.torch.export.graph_signature.InputSpec.persistent"
FOLDED_FROM = "pkg.onnxscript.optimizer.folded_from"


def torch_declared_constants(graph: onnx.GraphProto) -> set[str]:
    """Names of the float initializers that torch's exporter marks as constants of the torch
    model, not weights. Only a file that declares its torch export signature (some
    initializer's ``value_info`` carries :data:`TORCH_INPUT_KIND`) says so; for it these are

    - undeclared 0-d initializers: the Python scalars its optimizer lifted out of ``Constant``
      nodes (a 0-d torch parameter or buffer is declared; folded or fused weights keep rank
      >= 1, so they are not taken for constants);
    - undeclared initializers folded only from values the exporter named (see
      :func:`_named_by_the_exporter`): an attention mask or a table computed from shapes and
      constants, no parameter or buffer in it;
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
    folded = {info.name: _folded_from(info) for info in graph.value_info}
    constants = set()
    for init in graph.initializer:
        props = declared.get(init.name)
        sources = folded.get(init.name)
        if props is None and len(init.dims) == 0:
            constants.add(init.name)
        elif props is None and sources and all(_named_by_the_exporter(n, declared) for n in sources):
            constants.add(init.name)
        elif props is not None and props[TORCH_INPUT_KIND] == "BUFFER" and props.get(TORCH_PERSISTENT) == "False":
            constants.add(init.name)
    return constants


def _folded_from(info: onnx.ValueInfoProto) -> list[str] | None:
    """The names a value was folded from (a list literal; never evaluated as code)."""
    text = next((p.value for p in info.metadata_props if p.key == FOLDED_FROM), None)
    if text is None:
        return None
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def _named_by_the_exporter(name: str, declared: dict) -> bool:
    """A name the exporter gave a node of the traced graph (``add_1``, ``expand``, ``getitem_3``,
    ``convert_element_type_default``: an ATen or prims op's name, the overload ``default``, a
    numeric suffix) or a temporary of its own (``val_12``). Parameters and
    buffers are named by their module path (``blocks.0.attn.qkv.weight``) and declared; a
    module-level one folded away (``cls_token``) keeps a name that is no ATen op, so it is not
    taken for a constant."""
    if name in declared or "." in name:
        return False
    base = re.sub(r"_default$", "", re.sub(r"_\d+$", "", name))  # add_1; convert_element_type_default
    return base in ("val", "getitem") or (bool(re.fullmatch(r"[a-z_][a-z0-9_]*", base)) and
                                          (hasattr(torch.ops.aten, base) or hasattr(torch.ops.prims, base)))
