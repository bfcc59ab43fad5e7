"""The registry of model builders: the only callables a model folder's ``builder`` column can name.

A row of ``models.csv`` names its builder as ``"package.module:function"``. Model folders come
from strangers, so that string is a *name looked up here*, never something to import: a row
with ``builder=os:system`` fails ("not registered") and nothing it names is imported or called.

Three sources fill the registry:

- the project's own architectures, registered on first use (:data:`BUILTIN_BUILDERS`: the zoo
  families ``gmn_models.zoo.families:<family>``, the public zoos' ``SmallCNN`` and ``Siren``,
  and ``gmn_models.architectures:resnet``); their modules are imported only when a row
  needs them;
- installed packages, through the entry-point group ``gmn_models.builders``: the entry point's
  name is the builder string, its value the object reference, e.g. in a ``pyproject.toml``::

      [project.entry-points."gmn_models.builders"]
      "mypkg.nets:wide_mlp" = "mypkg.nets:wide_mlp"

  (loaded on first use of that name: it is code the user installed);
- Python code, with :func:`register_builder` (before compiling; :mod:`gmn_models.compile_folder`
  hands the resolved builder to its worker processes, which import it by reference).

A name registered twice is an error unless ``override=True``; so is an entry point whose name
another source already provides (the lookup of that name fails, naming both, until one is
uninstalled or the name is registered with ``override=True``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from .paths import ModelFolderError

__all__ = ["register_builder", "get_builder", "registered_builders", "unregister_builder", "reload",
           "is_builder_name", "BUILTIN_BUILDERS", "ENTRY_POINT_GROUP", "BuilderRegistrationError"]

ENTRY_POINT_GROUP = "gmn_models.builders"

# name -> (module, attribute) of the project's own builders; the strings are this file's, not a
# data file's, so importing them is safe
BUILTIN_BUILDERS: dict[str, tuple[str, str]] = {
    **{f"gmn_models.zoo.families:{family}": ("gmn_models.zoo.families", family)
       for family in ("mlp", "cnn2d", "cnn1d", "resnet", "deepsets", "vit")},
    "gmn_models.public_zoos:SmallCNN": ("gmn_models.public_zoos.small_cnn_zoo", "SmallCNN"),
    "gmn_models.public_zoos:Siren": ("gmn_models.public_zoos.siren", "Siren"),
    # what families.builder_name() gives for the two classes
    "gmn_models.public_zoos.small_cnn_zoo:SmallCNN": ("gmn_models.public_zoos.small_cnn_zoo", "SmallCNN"),
    "gmn_models.public_zoos.siren:Siren": ("gmn_models.public_zoos.siren", "Siren"),
    "gmn_models.architectures:resnet": ("gmn_models.architectures", "resnet"),
    "gmn_models.inr.families:inr": ("gmn_models.inr.families", "inr"),
}

_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", re.ASCII)
_HOW = (f"register yours with gmn_models.builders.register_builder or the {ENTRY_POINT_GROUP!r} "
        "entry-point group")


class BuilderRegistrationError(ValueError):
    """A bad :func:`register_builder` call: a malformed name, a callable that is not one, or a
    name already registered (without ``override=True``)."""


@dataclass
class _Entry:
    """One registered name: a callable, or how to load it on first use."""

    source: str  # "built in", "entry point of <dist>", "register_builder"
    ref: str = ""  # "module:attribute" of the callable
    fn: Callable[..., Any] | None = None
    load: Callable[[], Any] | None = None
    error: str | None = None  # set when the name is ambiguous: every lookup fails with it

    def describe(self) -> str:
        return f"{self.ref} ({self.source})"

    def resolve(self, name: str) -> Callable[..., Any]:
        if self.error is not None:
            raise ModelFolderError(self.error)
        if self.fn is None:
            try:
                fn = self.load()
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ModelFolderError(f"builder {name!r} ({self.describe()}) failed to load: "
                                       f"{type(exc).__name__}: {first}"[:400]) from None
            if not callable(fn):
                raise ModelFolderError(f"builder {name!r} ({self.describe()}) is a {type(fn).__name__}, "
                                       "not a callable")
            self.fn = fn
        return self.fn


_lock = threading.RLock()
_explicit: dict[str, _Entry] = {}  # register_builder(); wins over the others
_loaded: dict[str, _Entry] | None = None  # built-ins and entry points, read on first use


def is_builder_name(name: object) -> bool:
    """Whether ``name`` has the form ``"package.module:function"`` (dotted identifiers)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _describe(fn: Any) -> str:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else repr(fn)


def _shown(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 90 else text[:87] + "..."


def _builtin_loader(module: str, attr: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(module), attr)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    try:
        return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # a broken installation must not stop the built-ins
        warnings.warn(f"cannot read the {ENTRY_POINT_GROUP!r} entry points ({exc})", RuntimeWarning,
                      stacklevel=3)
        return []


def _read_sources() -> dict[str, _Entry]:
    entries = {name: _Entry("built in", f"{module}:{attr}", load=_builtin_loader(module, attr))
               for name, (module, attr) in BUILTIN_BUILDERS.items()}
    for ep in _entry_points():
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
        source = f"entry point of {dist}"
        if not is_builder_name(ep.name):
            warnings.warn(f"ignoring the {ENTRY_POINT_GROUP!r} entry point {ep.name!r} of {dist}: its "
                          "name must be the builder string 'package.module:function'", RuntimeWarning,
                          stacklevel=3)
            continue
        if ep.name in entries:
            first = entries[ep.name]
            if first.ref == ep.value:  # the same reference twice (e.g. two copies of the metadata)
                continue
            entries[ep.name] = _Entry(first.source, first.ref, error=(
                f"builder {ep.name!r} is provided twice ({first.describe()}; {ep.value} ({source})); "
                "uninstall one, or choose with gmn_models.builders.register_builder(..., override=True)"))
            continue
        entries[ep.name] = _Entry(source, ep.value, load=ep.load)
    return entries


def _sources() -> dict[str, _Entry]:
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _read_sources()
        return _loaded


def reload() -> None:
    """Read the built-ins and the ``gmn_models.builders`` entry points again (e.g. after
    installing a package at run time); :func:`register_builder` registrations are kept."""
    global _loaded
    with _lock:
        _loaded = None
    _sources()


def register_builder(name: str, fn: Callable[..., nn.Module], *, override: bool = False) -> None:
    """Register ``fn`` (called with a row's ``builder_kwargs``, returning an ``nn.Module``)
    under ``name``, the ``"package.module:function"`` string rows write in their ``builder``
    column (usually the function's own ``f"{fn.__module__}:{fn.__qualname__}"``).

    :class:`BuilderRegistrationError` for a malformed name, a non-callable ``fn``, or a name
    already registered (built in, by an entry point or by an earlier call) unless
    ``override=True``. Registering the same callable again under the same name is a no-op.
    """
    if not is_builder_name(name):
        raise BuilderRegistrationError(f"builder name {_shown(name)} is not of the form "
                                       "'package.module:function'")
    if not callable(fn):
        raise BuilderRegistrationError(f"builder {name!r}: {fn!r} is not callable")
    with _lock:
        existing = _explicit.get(name) or _sources().get(name)
        if existing is not None and not override and not _same(existing, name, fn):
            raise BuilderRegistrationError(
                f"builder {name!r} is already registered to {existing.describe()}; registering "
                f"{_describe(fn)} under the same name needs override=True")
        _explicit[name] = _Entry("register_builder", _describe(fn), fn=fn)


def _same(entry: _Entry, name: str, fn: Callable) -> bool:
    try:
        return entry.resolve(name) is fn
    except ModelFolderError:  # ambiguous or failing to load: not the same
        return False


def unregister_builder(name: str) -> None:
    """Remove a :func:`register_builder` registration (a built-in or entry point it overrode
    is visible again). ``KeyError`` if ``name`` was not registered that way."""
    with _lock:
        if name not in _explicit:
            raise KeyError(f"builder {name!r} was not registered with register_builder")
        del _explicit[name]


def registered_builders() -> list[str]:
    """Every usable builder name, sorted (ambiguous entry points left out)."""
    with _lock:
        names = set(_explicit) | {n for n, e in _sources().items() if e.error is None}
    return sorted(names)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``. An unknown name is a one-line
    :class:`~gmn_models.paths.ModelFolderError` (naming it, some known builders and how to
    register one); nothing named by ``name`` is imported."""
    with _lock:
        entry = _explicit.get(name) if isinstance(name, str) else None
        if entry is None and isinstance(name, str):
            entry = _sources().get(name)
        if entry is None:
            raise ModelFolderError(f"builder {_shown(name)} is not registered ({_known(name)}); {_HOW}")
        return entry.resolve(name)


def _known(name: object, shown: int = 3) -> str:
    """A few known names, close matches first, then registrations, then the built-ins in order."""
    known = list(dict.fromkeys([*_explicit, *(n for n, e in _sources().items() if e.error is None)]))
    if not known:
        return "none are"
    close = difflib.get_close_matches(name, known, n=shown, cutoff=0.6) if isinstance(name, str) else []
    first = close + [k for k in known if k not in close][:shown - len(close)]
    more = f", … {len(known)} in all" if len(known) > len(first) else ""
    return f"known: {', '.join(first)}{more}"
