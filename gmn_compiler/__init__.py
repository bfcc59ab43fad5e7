"""gmn-compiler: neural networks -> symmetry-faithful parameter graphs (PyG ``Data``)."""

from . import schema
from .api import compile, to_ir
from .errors import (CompileError, DecompileError, DuplicateRegistrationError, LoweringError,
                     SymmetryError, UnsupportedOpsError)
from .graph import ParameterGraph, load
from .registry import hookimpl

__all__ = [
    "compile", "to_ir", "load", "check_symmetry", "ParameterGraph", "schema", "hookimpl",
    "CompileError", "DecompileError", "DuplicateRegistrationError", "LoweringError",
    "SymmetryError", "UnsupportedOpsError",
]
__version__ = "0.1.0"


def check_symmetry(model, example_inputs=None, trials: int = 8, seed: int = 0, **options):
    """Run the soundness and completeness oracles (DESIGN §4) on ``model`` — an ``nn.Module``
    with ``example_inputs`` (a tuple), or an ONNX path / ``onnx.ModelProto`` checked through
    onnxruntime — and raise :class:`SymmetryError` naming the automorphism (or missing
    symmetry) that fails; returns a report. See :func:`gmn_compiler.symmetry.check_symmetry`."""
    from .symmetry import check_symmetry as _check

    return _check(model, example_inputs, trials=trials, seed=seed, **options)
