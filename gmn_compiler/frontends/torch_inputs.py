"""What the torch frontend checks and says about the user's inputs to a model.

- :func:`export_error`: the one-line CompileError for a failed ``torch.export``; inputs that
  do not fit the model (a shape mismatch) are told apart from export limitations.
- :func:`user_input_ranks`: the model's input names and ranks, to check
  ``input_neuron_axes`` against (:func:`gmn_compiler.frontends.checks.check_input_axes`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

from ..errors import CompileError


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Silence the named loggers (below CRITICAL) for the duration; levels restored after."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def _input_shapes_text(example_inputs: tuple) -> str:
    """``[(1, 5), int]``: each input's shape, or its type name when it is no tensor."""
    return "[" + ", ".join(str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
                           for x in example_inputs) + "]"


def export_error(model: nn.Module, example_inputs: tuple, exc: Exception) -> CompileError:
    """The CompileError for ``model`` failing to export on ``example_inputs`` with ``exc``.

    Runs the model once eagerly (no grad; call it while the model is in eval mode): if that
    fails too, the inputs do not fit the model and the message gives their shapes and
    PyTorch's eager message (which names the expected shape when it can, e.g. ``mat1 and
    mat2 shapes cannot be multiplied (1x5 and 8x4)``); otherwise it is an export
    limitation, given with torch.export's first line."""
    name = type(model).__name__
    try:
        with torch.no_grad():
            model(*example_inputs)
    except Exception as eager:
        return CompileError(f"example input shapes {_input_shapes_text(example_inputs)} do not fit "
                            f"{name}: {_first_line(eager)}; give inputs shaped like a real batch")
    return CompileError(f"torch.export could not trace {name}: {_first_line(exc)}")


def user_input_ranks(ep: torch.export.ExportedProgram) -> dict[str, int | None]:
    """Model input name (the placeholder of a user input) -> rank; ``None`` for an input
    that is no tensor."""
    user_inputs = set(ep.graph_signature.user_inputs)
    ranks = {}
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            ranks[node.name] = val.dim() if isinstance(val, torch.Tensor) else None
    return ranks
