"""Exceptions raised by the compiler. Each message is one line: what, where, what to do."""

from __future__ import annotations


class CompileError(Exception):
    """A model could not be compiled (bad input, unsupported construct)."""


class UnsupportedOpsError(CompileError):
    """One or more ops have no lowering rule. ``ops`` lists ``(kind, location)`` pairs."""

    def __init__(self, ops: list[tuple[str, str]]):
        self.ops = ops
        kinds: dict[str, list[str]] = {}
        for kind, where in ops:
            kinds.setdefault(kind, []).append(where)
        parts = [f"{k} at {', '.join(sorted(set(w))[:3])}" + (" …" if len(set(w)) > 3 else "")
                 for k, w in kinds.items()]
        super().__init__(
            f"unsupported op kinds ({len(kinds)}): " + "; ".join(parts)
            + " — write a plugin that registers a rule for them (see README, 'Writing a plugin')"
        )


class LoweringError(CompileError):
    """A rule met a construct it cannot lower; the message names the op and its location."""


class ProvenanceError(LoweringError):
    """A rule emitted edge values of parameter ``param`` that are not its entries at the
    offsets the rule gave (its ``ParamRef`` values and offsets went separate ways)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class Unsupported(Exception):
    """Raised by a normalizer: this instance of the op cannot be lowered, because of what the
    message says (``raise Unsupported("Gather with indices of rank > 1")``). The frontend
    records the op as unsupported with that reason; compiling reports every such op at once
    (:class:`UnsupportedOpsError`), and the torch frontend first tries the op's decomposition."""

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else "unsupported"


class DuplicateRegistrationError(Exception):
    """A kind, target or module class was registered twice without ``override=True``."""


class DecompileError(ValueError):
    """Edge values could not be turned back into parameters (wrong shape, tied copies disagree)."""


class SymmetryError(AssertionError):
    """A correctness oracle failed: an automorphism is not function-preserving, or a known
    symmetry of the model is missing from the graph."""
