"""gmn-compiler: neural networks -> symmetry-faithful parameter graphs (PyG ``Data``).

The public names are loaded on first use (PEP 562 module ``__getattr__``), so that
``import gmn_compiler`` -- and the ``gmn-compile`` command's ``--help``/``--version`` -- do not
import torch, PyG or onnx. ``gmn_compiler.compile``, ``from gmn_compiler import load`` and the
rest behave exactly as eager imports would.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from .errors import (CompileError, DecompileError, DuplicateRegistrationError, LoweringError,
                     SymmetryError, UnsupportedOpsError)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily
    from . import schema
    from .alignment import weight_matching
    from .api import compile, to_ir
    from .permutations import permutation_spec
    from .graph import ParameterGraph, load
    from .registry import hookimpl

__all__ = [
    "compile", "to_ir", "load", "check_symmetry", "ParameterGraph", "schema", "hookimpl",
    "CompileError", "DecompileError", "DuplicateRegistrationError", "LoweringError",
    "SymmetryError", "UnsupportedOpsError", "permutation_spec", "weight_matching",
]
__version__ = "0.1.0"

_LAZY: dict[str, tuple[str, str | None]] = {
    "compile": ("api", "compile"), "to_ir": ("api", "to_ir"),
    "load": ("graph", "load"), "ParameterGraph": ("graph", "ParameterGraph"),
    "hookimpl": ("registry", "hookimpl"), "schema": ("schema", None),
    "DenseFeatures": ("transforms", "DenseFeatures"),
    "permutation_spec": ("permutations", "permutation_spec"),
    "weight_matching": ("alignment", "weight_matching"),
}
"""Public name -> (submodule, attribute of it; ``None`` for the submodule itself)."""


def __getattr__(name: str) -> Any:
    """Load a public name (or a submodule, e.g. ``gmn_compiler.registry``) on first access
    and cache it in the package namespace; ``AttributeError`` for anything else."""
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        module = importlib.import_module(f".{module_name}", __name__)
        value = module if attribute is None else getattr(module, attribute)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def check_symmetry(model, example_inputs=None, trials: int = 8, seed: int = 0, **options):
    """Run the soundness and completeness oracles (DESIGN §4) on ``model`` — an ``nn.Module``
    with ``example_inputs`` (a tuple), or an ONNX path / ``onnx.ModelProto`` checked through
    onnxruntime — and raise :class:`SymmetryError` naming the automorphism (or missing
    symmetry) that fails; returns a report. See :func:`gmn_compiler.symmetry.check_symmetry`."""
    from .symmetry import check_symmetry as _check

    return _check(model, example_inputs, trials=trials, seed=seed, **options)
