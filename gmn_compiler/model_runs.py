"""Running a model with a graph's edge values written into its parameters: the oracles'
side that executes (torch in float64, or onnxruntime for graphs compiled from ONNX)."""

from __future__ import annotations

import copy

import torch

from .errors import SymmetryError
from .graph import ParameterGraph


def _run(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def fresh_eval(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` switched to training and back to eval mode: modules that cache tensors
    derived from their parameters when entering eval mode (e2cnn's ``R2Conv`` expands its
    filter) rebuild them from the current parameters. Only the mode flags of other modules
    change, and they end in eval mode as before."""
    with torch.no_grad():  # the rebuilt caches stay plain tensors (deep-copyable)
        module.train()
        return module.eval()


def outputs_with_values(model: torch.nn.Module, pg: ParameterGraph, values: torch.Tensor,
                        inputs: tuple, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Run a copy of ``model`` in ``dtype`` whose parameters come from ``values``."""
    state = pg.to_state_dict(values)
    clone = copy.deepcopy(model).to(dtype).eval()
    own = clone.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise SymmetryError(f"decompiled names {unknown[:3]} are not in the model's state dict")
    clone.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    fresh_eval(clone)
    return [t.double() for t in _run(clone, cast_floats(inputs, dtype))]


def cast_floats(inputs: tuple, dtype: torch.dtype) -> tuple:
    """``inputs`` with every floating tensor cast to ``dtype`` (integer inputs unchanged)."""
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)


def torch_runner(model: torch.nn.Module, pg: ParameterGraph, inputs: tuple):
    """``(reference outputs, run(values) -> outputs, dtype)`` for a torch model: in float64,
    or in float32 when the model cannot run in float64 (it casts internally)."""
    for dtype in (torch.float64, torch.float32):
        try:
            reference = [t.double() for t in _run(fresh_eval(copy.deepcopy(model).to(dtype)), cast_floats(inputs, dtype))]
        except RuntimeError:
            if dtype == torch.float32:
                raise
            continue
        work = copy.deepcopy(model).to(dtype).eval()  # one copy, rewritten in place for each run
        written: list[torch.Tensor] = []  # the values the copy holds

        def run(values: torch.Tensor) -> list[torch.Tensor]:
            only = None
            if written:  # rewrite only the parameters whose edges changed since the last run
                param = pg.data.edge_param[values != written[0]]
                only = set(torch.unique(param[param >= 0]).tolist())
            pg.write_into(work, values, only=only)
            written[:] = [values]
            fresh_eval(work)
            return [t.double() for t in _run(work, cast_floats(inputs, dtype))]

        return reference, run, dtype


def onnx_runner(pg: ParameterGraph, inputs: dict | None = None, seed: int = 0):
    """``(reference outputs, run(values) -> outputs)`` through onnxruntime, for a graph
    compiled from ONNX. ``inputs`` maps input names to arrays (random when omitted)."""
    import numpy as np
    import onnxruntime as ort

    def session(model):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    base = session(pg.onnx_model)
    if inputs is None:
        rng = np.random.default_rng(seed)
        inputs = {}
        for i in base.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 2 for d in i.shape]
            if "int" in i.type:  # token ids: small, valid for any vocabulary of two or more
                inputs[i.name] = rng.integers(0, 2, shape).astype(np.int32 if "int32" in i.type else np.int64)
            else:
                inputs[i.name] = rng.standard_normal(shape).astype(np.float64 if "double" in i.type else np.float32)

    def run(model_session):
        return [torch.from_numpy(np.asarray(o)).double() for o in model_session.run(None, inputs)]

    return run(base), lambda values: run(session(pg.to_onnx_model(values)))


def close_outputs(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float, atol: float,
                  per_tensor: bool = False) -> bool:
    """Whether two runs' outputs have the same count and shapes and agree within tolerance
    (see :func:`agree`)."""
    return len(a) == len(b) and all(x.shape == y.shape and agree(x, y, rtol, atol, per_tensor)
                                    for x, y in zip(a, b))


def agree(reference: torch.Tensor, out: torch.Tensor, rtol: float, atol: float, per_tensor: bool) -> bool:
    """``|out - reference| <= atol + rtol * scale`` everywhere, where ``scale`` is each entry's
    own ``|reference|``, or with ``per_tensor`` the largest ``|reference|`` of the tensor. Use
    ``per_tensor`` for float32 runs: the rounding error of a sum grows with its largest terms,
    not with its result, so an output that cancels to near zero carries an error of a few ulps
    of the tensor's scale when a permutation reorders the sum."""
    if not per_tensor or reference.numel() == 0:
        return torch.allclose(reference, out, rtol=rtol, atol=atol)
    bound = atol + rtol * float(reference.abs().max())
    return bool(((out - reference).abs() <= bound).all())  # NaN anywhere: False, as allclose

