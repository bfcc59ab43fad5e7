"""Everything a lowering rule imports: the one public surface for plugin authors.

A plugin is a module (or object) with a ``gmn_register`` hook::

    from gmn_compiler.rules import LoweringContext, Op, hookimpl

    def lower_cumsum(ctx: LoweringContext, op: Op) -> None:
        x = op.inputs[0]
        ctx.set_layout(op.output, ctx.derive(x, "cumsum", sig=("cumsum", op.attrs["dim"])))

    @hookimpl
    def gmn_register(registry: Registrar) -> None:
        registry.add_activation("cumsum")              # open vocabularies
        registry.add_rule("cumsum", lower_cumsum)
        registry.map_aten("aten.cumsum.default", "cumsum", lambda x, dim, **kw: ([x], {"dim": dim}))

What is here:

- :class:`Registrar` (what the hook receives: ``add_rule``, ``map_aten``, ``map_onnx``,
  ``add_leaf_module``, ``add_node_role`` / ``add_activation`` / ``add_edge_type``) and
  :data:`hookimpl`;
- :class:`LoweringContext` (what a rule works with: layouts of values, nodes, edges,
  parameters, symmetry declarations; see its methods), :class:`Op`, :class:`Value`,
  :class:`ParamRef` (the IR a rule reads);
- :class:`Layout` and the :mod:`layout` module (pure functions that move node ids the way
  structural ops move data: ``reshape``, ``permute``, ``select``, ``narrow``, ``cat``,
  ``take``...), :func:`signature_code` (a float code of an op's hyper-parameters);
- :class:`LoweringError` (raise ``ctx.error(...)`` to refuse an op with a clear message) and
  :class:`Unsupported` (raised by a normalizer: this instance of the op cannot be lowered,
  because...; reported with every other refusal before lowering starts);
- :class:`OpKind` (the declaration ``add_rule`` makes: operands, attributes, aliasing,
  elementwise, the neuron axis of a model input it reads first, a view on tensors), with the
  types of its fields :data:`InputAxis` and :data:`View`.

The built-in plugins (``gmn_plugins``) import only from this module; a test enforces it. The
oracles a plugin is tested with are in :mod:`gmn_compiler.testing`.
"""

from __future__ import annotations

from . import layout
from .context import LoweringContext
from .errors import LoweringError, Unsupported
from .ir import Op, ParamRef, Value
from .layout import Layout, signature_code
from .registry import InputAxis, OpKind, Registrar, Rule, View, hookimpl

__all__ = [
    "InputAxis", "LoweringContext", "LoweringError", "Layout", "Op", "OpKind", "ParamRef", "Registrar", "Rule",
    "Unsupported", "Value", "View", "hookimpl", "layout", "signature_code",
]
