"""The lowering driver: runs the registered rule of every IR op, in order, on one builder.

Rules receive a :class:`~gmn_compiler.context.LoweringContext` (its own module), which owns
the layouts of all values and the node reuse policy.
"""

from __future__ import annotations

import torch

from .blocks import EdgeBlocks
from . import ties
from .builder import GraphBuilder
from .context import LoweringContext
from .declarations import Partition, fixed_units, reconcile
from .errors import LoweringError, UnsupportedOpsError
from .ir import IRGraph
from .lowering_io import create_inputs, pin_outputs
from .registry import Registry

__all__ = ["LoweringContext", "lower", "unsupported_ops"]

def unsupported_ops(ir: IRGraph, registry: Registry) -> list[tuple[str, str]]:
    """Every op of ``ir`` without a rule or refused by its normalizer, as ``(kind, location)``
    (the refusal's reason in parentheses after the kind)."""
    found = []
    for op in ir.ops:
        if registry.rule(op.kind) is None:
            found.append((op.kind, op.location))
        elif op.unsupported is not None:
            found.append((f"{op.kind} ({op.unsupported})", op.location))
    return found


def check_declarations(ir: IRGraph, registry: Registry) -> None:
    """Every op's operands and attributes are among those its kind declares (a plugin bug
    otherwise: reported with the plugin's name, before any rule runs)."""
    for op in ir.ops:
        try:
            registry.rules[op.kind].check(op)
        except ValueError as exc:
            raise LoweringError(f"{op.kind} at {op.location}: {exc}") from None


def lower(ir: IRGraph, registry: Registry) -> tuple[EdgeBlocks, LoweringContext]:
    """Lower every op of ``ir``; raises UnsupportedOpsError listing all ops without a rule."""
    missing = unsupported_ops(ir, registry)
    if missing:
        raise UnsupportedOpsError(missing)
    check_declarations(ir, registry)
    builder = GraphBuilder(ir.params, ir.aliases, registry.vocabulary)
    ctx = LoweringContext(ir, registry, builder)
    create_inputs(ctx)
    summary: dict[str, dict[str, int]] = {}
    for op in ir.ops:
        ctx.op = op
        nodes_before, blocks_before = builder.num_nodes, len(builder.blocks)
        try:
            registry.rules[op.kind].rule(ctx, op)
        except LoweringError:
            raise
        except Exception as exc:  # a rule's bug or an unexpected construct: name the op
            raise LoweringError(f"{op.kind} at {op.location}: {type(exc).__name__}: {exc}") from exc
        for out in op.outputs:
            if out.id not in ctx.layouts:
                raise LoweringError(f"rule for {op.kind!r} at {op.location} set no layout for {out}")
        row = summary.setdefault(op.kind, {"ops": 0, "nodes": 0, "edges": 0})
        row["ops"] += 1
        row["nodes"] += builder.num_nodes - nodes_before
        row["edges"] += sum(b.count for b in builder.blocks[blocks_before:])
    ctx.op = None
    ctx.summary = summary
    for name, relations in builder.tie_shared_params():
        _declare_ties(ctx, name, relations)
    ctx.partitions.append(fixed_units(ctx.symmetries, ctx.unit_classes, ctx.derived))
    reconcile(ctx.symmetries, ctx.partitions, ctx.unit_classes)
    ctx.symmetries = [s for s in ctx.symmetries if not s.pop("withdrawn", False)]
    for sym in ctx.symmetries:  # units tied one to one (a residual add) share a root
        sym["roots"] = torch.tensor([ctx.unit_classes.find(n) for n in sym["nodes"].tolist()], dtype=torch.long)
    pin_outputs(ctx)
    return builder.finalize(), ctx


def _declare_ties(ctx: LoweringContext, name: str, relations: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """What the ties of one axis of parameter ``name`` mean for declared symmetries: units an
    entry is broadcast to move together as a block (a partition); units that meet the same
    index one to one in different uses are one unit seen twice (tied, as a residual add ties
    its operands), so a declaration moving one moves the other -- or keeps it where the other
    is fixed (``W[:, 0]`` as a bias pins the unit of W's column 0)."""
    first: dict[int, int] = {}
    for index, nodes in relations:
        if ties.broadcasts((index, nodes)):
            blocks = torch.unique(index, return_inverse=True)[1]
            ctx.partitions.append(Partition(ctx.root_nodes(nodes).tolist(), blocks.tolist(), True,
                                            f"units sharing an entry of {name}"))
        elif ties.distinct(nodes):
            for i, n in zip(index.tolist(), nodes.tolist()):
                ctx.unit_classes.union(first.setdefault(i, n), n)
