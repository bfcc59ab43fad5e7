"""Decompositions for ATen ops that have no lowering rule.

``torch.export`` keeps composite ops such as ``einsum``, ``glu`` or ``channel_shuffle`` whole.
Rather than a rule for each, the torch frontend converts such an op through the ops PyTorch
itself decomposes it into: :func:`trace_decomposition` traces one call with ``make_fx`` —
composite (CompositeImplicitAutograd) ops decompose on their own, others through the
decomposition registered for them in ``torch._decomp`` — on empty CPU tensors of the call's
shapes (never written, so never paged in; CPU rather than meta so that constants inside the
decomposition, an ``arange`` of indices, get values).
"""

from __future__ import annotations

import torch


def _addcmul(input, tensor1, tensor2, *, value=1):
    product = tensor1 * tensor2  # the operands first: a parameter meets the activation at once
    return input + (product if value == 1 else product * value)


def _addcdiv(input, tensor1, tensor2, *, value=1):
    quotient = tensor1 / tensor2
    return input + (quotient if value == 1 else quotient * value)


def _im2col(input, kernel_size, dilation, padding, stride):
    """``unfold``: every window position's entries stacked along a new axis after the channels,
    written as padding, strided slices and a stack (views of the input along free axes)."""
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel_size, dilation, padding, stride
    padded = torch.nn.functional.pad(input, (pw, pw, ph, ph)) if ph or pw else input
    batch, channels, height, width = padded.shape
    rows, cols = (height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1
    windows = [padded[:, :, i * dh: i * dh + sh * (rows - 1) + 1: sh, j * dw: j * dw + sw * (cols - 1) + 1: sw]
               for i in range(kh) for j in range(kw)]
    return torch.stack(windows, dim=2).reshape(batch, channels * kh * kw, rows * cols)


def _preferred() -> dict:
    """Decompositions of our own, used before PyTorch's, where PyTorch's first step computes on
    a parameter alone (``value * tensor1`` of ``addcmul``, ResMLP's ``Affine``), which the
    frontend refuses; ours compute the same function with the activation in the first op."""
    aten = torch.ops.aten
    return {aten.addcmul.default: _addcmul, aten.addcdiv.default: _addcdiv, aten.im2col.default: _im2col}


def trace_decomposition(node: torch.fx.Node) -> tuple[torch.fx.GraphModule, list[torch.fx.Node]] | None:
    """The decomposition of the call ``node`` as a graph whose placeholders stand, in order,
    for the returned tensor arguments of ``node``; ``None`` when the op does not decompose
    (it traces to itself, or tracing fails) or an argument is no tensor of known shape."""
    from torch._decomp import core_aten_decompositions, get_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    if not isinstance(node.target, torch._ops.OpOverload):
        return None
    leaves, spec = torch.utils._pytree.tree_flatten((node.args, node.kwargs))
    slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.fx.Node)]
    if not all(isinstance(leaves[i].meta.get("val"), torch.Tensor) for i in slots):
        return None
    preferred = _preferred()
    table = {node.target: preferred[node.target]} if node.target in preferred else get_decompositions([node.target])
    if not table:
        core = core_aten_decompositions()
        if node.target in core:
            table = {node.target: core[node.target]}

    def run(*tensors):
        filled = list(leaves)
        for i, t in zip(slots, tensors):
            filled[i] = t
        args, kwargs = torch.utils._pytree.tree_unflatten(filled, spec)
        return node.target(*args, **kwargs)

    examples = [torch.empty(leaves[i].meta["val"].shape, dtype=leaves[i].meta["val"].dtype) for i in slots]
    try:
        sub = make_fx(run, decomposition_table=table, tracing_mode="fake")(*examples)
    except Exception:
        return None
    if any(n.target is node.target for n in sub.graph.nodes):
        return None
    return sub, [leaves[i] for i in slots]
