"""Plugin registry: lowering rules, frontend mappings and leaf modules, from pluggy plugins.

Every plugin — the built-ins in ``gmn_plugins`` and third-party ones found through the
entry-point group ``gmn_compiler`` — implements one hook, :func:`Hookspecs.gmn_register`,
which receives a :class:`Registrar` (a typed view of the registry that knows which plugin is
registering). The hook is called once per plugin, in load order: built-ins first.

The built-ins are found through an entry point too (group :data:`BUILTINS_GROUP`, declared by
this distribution in ``pyproject.toml``), never imported here: ``gmn_plugins`` imports
:mod:`gmn_compiler.rules`, which imports this module.

Set ``GMN_COMPILER_PLUGINS`` to a comma-separated list of entry-point names to load only
those third-party plugins, or to ``none`` to load none.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import pluggy
import torch

from . import schema
from .errors import DuplicateRegistrationError

if TYPE_CHECKING:  # the context imports this module
    from .context import LoweringContext
    from .ir import Op

PROJECT = "gmn_compiler"
DISTRIBUTION = "gmn-compiler"
BUILTINS_GROUP = "gmn_compiler.builtins"
"""Entry-point group of :data:`DISTRIBUTION` whose entries each name a list of built-in plugins
(``gmn_plugins:DEFAULT_PLUGINS``), loaded before any other plugin."""
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Rule = Callable[["LoweringContext", "Op"], None]
"""``rule(ctx: LoweringContext, op: Op) -> None``: lower one op into the graph."""

InputAxis = Union[int, Callable[["Op"], Optional[int]], None]
"""The neuron axis of a model input whose first consumer is an op of this kind: an axis, or a
function of the op (``None``: the kind says nothing, the core keeps looking)."""

View = Callable[[torch.Tensor, dict, list[tuple[int, ...]]], list[torch.Tensor]]
"""``view(tensor, attrs, output_shapes) -> outputs``: what an op of this kind does to a tensor
it only rearranges (used to see a parameter through the op: values and offsets alike)."""

Normalizer = Callable[..., tuple[list, dict]]
"""``normalize(*args, **kwargs) -> (inputs, attrs)``: turn a frontend op's operands (already
converted to Value / ParamRef / Python objects) into the kind's canonical inputs and attrs."""


class Hookspecs:
    @hookspec
    def gmn_register(self, registry: "Registrar") -> None:
        """Register lowering rules and frontend mappings.

        :param registry: call its ``add_rule``, ``map_aten``, ``map_onnx``,
            ``add_leaf_module`` methods. Registering something another plugin registered
            raises :class:`DuplicateRegistrationError` unless ``override=True`` is passed.
        """


GENERIC_ATTRIBUTES = frozenset({"params", "inner", "module_attrs", "module_path", "module_type"})
"""Attributes the frontends give every op of a leaf module (see :meth:`Registrar.add_leaf_module`)."""


@dataclass(frozen=True)
class OpKind:
    """The one declaration of an op kind: its rule, and everything the core may assume about
    the kind without running the rule (see :meth:`Registrar.add_rule`)."""

    kind: str
    rule: Rule
    plugin: str
    inputs: tuple[str, ...] | None = None
    """Names of the canonical operands, in order (None: not declared, not checked)."""
    attributes: tuple[str, ...] | None = None
    """Names of the attributes its normalizers may give (None: not declared, not checked)."""
    aliasing: bool = False
    """The op only rearranges entries: its outputs alias its inputs."""
    elementwise: bool = False
    """Output entry ``i`` depends on input entries ``i`` only (after broadcasting); the output
    has the shape of the broadcast inputs and the same axes."""
    input_axis: InputAxis = None
    """The neuron axis of a model input first read by an op of this kind."""
    view: View | None = None
    """How the kind rearranges a tensor (aliasing kinds): applied to a parameter, the op is a
    view of it, and the parameter stays a parameter."""
    attaches_params: bool = False
    """The rule attaches every parameter operand through ``ctx.attach_param`` (so a parameter
    the model transforms elementwise or masks may reach it)."""
    weight_norm: bool = False
    """The rule encodes a weight-normalised weight (``ParamRef.weight_norm``: the stored ``v``
    as its edges, the gain ``g`` attached beside them)."""

    def axis_of_input(self, op: "Op") -> int | None:
        return self.input_axis(op) if callable(self.input_axis) else self.input_axis

    def check(self, op: "Op") -> None:
        """Raise ``ValueError`` when ``op`` has operands or attributes the declaration does not name."""
        if self.inputs is not None and len(op.inputs) > len(self.inputs):
            raise ValueError(f"{len(op.inputs)} operands, but kind {self.kind!r} (plugin {self.plugin!r}) "
                             f"declares {len(self.inputs)}: {', '.join(self.inputs) or 'none'}")
        if self.attributes is not None:
            unknown = sorted(set(op.attrs) - set(self.attributes) - GENERIC_ATTRIBUTES)
            if unknown:
                raise ValueError(f"attributes {unknown} that kind {self.kind!r} (plugin {self.plugin!r}) "
                                 f"does not declare (declared: {', '.join(self.attributes) or 'none'})")




@dataclass
class Mapping:
    kind: str
    normalize: Normalizer | None
    plugin: str
    module_attrs: Callable[[Any], dict] | None = None  # leaf modules: plain data read off the module

    def normalized(self, *args: Any, **kwargs: Any) -> tuple[list, dict]:
        """The kind's canonical ``(inputs, attrs)`` for a frontend op's operands: the
        normalizer's, or the operands as they are ("args as inputs"). A normalizer's
        :class:`~gmn_compiler.errors.Unsupported` propagates."""
        if self.normalize is None:
            return list(args), dict(kwargs)
        return self.normalize(*args, **kwargs)


@dataclass
class Registry:
    """All registered rules and mappings. Build one with :func:`load_registry`."""

    rules: dict[str, OpKind] = field(default_factory=dict)
    aten: dict[str, Mapping] = field(default_factory=dict)
    onnx: dict[str, Mapping] = field(default_factory=dict)
    leaf_modules: dict[str, Mapping] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)
    names: dict[str, dict[str, str]] = field(
        default_factory=lambda: {v: {} for v in schema.CATEGORICAL})
    """Vocabulary names registered by plugins: vocabulary -> {name: plugin}, in registration order."""

    @property
    def vocabulary(self) -> schema.Vocabulary:
        """The built-in vocabulary extended by every registered name (registration order)."""
        return schema.BUILTIN.extended(**{v: tuple(self.names[v]) for v in schema.CATEGORICAL})

    def rule(self, kind: str) -> OpKind | None:
        """The declaration of ``kind`` (None when no plugin registered a rule for it)."""
        return self.rules.get(kind)

    def is_aliasing(self, kind: str) -> bool:
        entry = self.rules.get(kind)
        return bool(entry and entry.aliasing)

    def is_elementwise(self, kind: str) -> bool:
        entry = self.rules.get(kind)
        return bool(entry and entry.elementwise)

    def attaches_transformed(self, kind: str) -> bool:
        """The rule of ``kind`` attaches its parameter operands through ``ctx.attach_param``,
        which records their elementwise functions and masks (elementwise kinds, and kinds
        declared with ``attaches_params=True``)."""
        entry = self.rules.get(kind)
        return bool(entry and (entry.elementwise or entry.attaches_params))

    def takes_weight_norm(self, kind: str) -> bool:
        """The rule of ``kind`` encodes weight-normalised weights (declared ``weight_norm=True``)."""
        entry = self.rules.get(kind)
        return bool(entry and entry.weight_norm)

    def view(self, kind: str) -> View | None:
        """How ``kind`` rearranges a tensor, when it is declared a view (see :attr:`OpKind.view`)."""
        entry = self.rules.get(kind)
        return entry.view if entry else None

    def frontends(self, kind: str) -> list[str]:
        """Which frontends produce ``kind``."""
        found = []
        if any(m.kind == kind for m in self.aten.values()) or any(
            m.kind == kind for m in self.leaf_modules.values()
        ):
            found.append("torch")
        if any(m.kind == kind for m in self.onnx.values()):
            found.append("onnx")
        return found


def _put(table: dict, key: str, entry, what: str, override: bool) -> None:
    if key in table and not override:
        raise DuplicateRegistrationError(
            f"{what} {key!r} registered by plugin {table[key].plugin!r} and again by plugin "
            f"{entry.plugin!r}; pass override=True to replace it"
        )
    table[key] = entry


class Registrar:
    """The object a plugin's ``gmn_register`` hook receives."""

    def __init__(self, registry: Registry, plugin: str):
        self._registry = registry
        self.plugin = plugin

    def add_rule(self, kind: str, rule: Rule, *, inputs: tuple[str, ...] | None = None,
                 attributes: tuple[str, ...] | None = None, aliasing: bool = False,
                 elementwise: bool = False, input_axis: InputAxis = None, view: View | None = None,
                 attaches_params: bool = False, weight_norm: bool = False, override: bool = False) -> None:
        """Declare the op kind ``kind``, lowered by ``rule(ctx, op)``; the core reads the rest
        of the declaration instead of knowing kinds by name:

        - ``inputs`` / ``attributes``: names of the canonical operands (in order) and of the
          attributes normalizers give; when declared, an op with others is a plugin bug,
          reported with the plugin's name before lowering starts;
        - ``aliasing``: the op only rearranges entries of its inputs (reshape, permute, cat...);
        - ``elementwise``: an entry-wise function (activations, add, mul...), followed when
          inferring a model input's neuron axis and the axes a broadcast keeps equal;
        - ``input_axis``: the neuron axis of a model input first read by this kind (1 for
          channels-first convolutions, -1 for linear layers), or a function of the op;
        - ``view(tensor, attrs, output_shapes) -> outputs``: for aliasing kinds, what the op does
          to a tensor; a parameter read only through such ops stays a parameter (seen through
          the view) in both frontends;
        - ``attaches_params``: the rule attaches every parameter operand through
          ``ctx.attach_param``, which records a function the model applies to the parameter
          first (``1 + w``, a constant mask); without it such a parameter is refused;
        - ``weight_norm``: the rule encodes a weight-normalised weight operand (see
          :meth:`LoweringContext.attach_weight_norm_gain`); without it such a weight is refused.
        """
        if view is not None and not aliasing:
            raise ValueError(f"kind {kind!r}: a view must be declared aliasing=True")
        entry = OpKind(kind, rule, self.plugin, None if inputs is None else tuple(inputs),
                       None if attributes is None else tuple(attributes), aliasing, elementwise,
                       input_axis, view, attaches_params, weight_norm)
        _put(self._registry.rules, kind, entry, "kind", override)

    def add_node_role(self, name: str) -> None:
        """Register a new node role (``ctx.add_nodes(count, name, ...)`` then accepts it)."""
        self._add_name("node_roles", name)

    def add_activation(self, name: str) -> None:
        """Register a new activation / elementwise function name for nodes (``ctx.derive``,
        ``ctx.set_activation``)."""
        self._add_name("activations", name)

    def add_edge_type(self, name: str) -> None:
        """Register a new edge type (``ctx.attach_param`` / ``ctx.add_edges`` accept it)."""
        self._add_name("edge_types", name)

    def _add_name(self, vocabulary: str, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {vocabulary} name must be a non-empty string, got {name!r}")
        if name in schema.BUILTIN_NAMES[vocabulary]:
            raise DuplicateRegistrationError(f"{vocabulary} name {name!r} is built in; plugin "
                                             f"{self.plugin!r} cannot register it again")
        table = self._registry.names[vocabulary]
        if name in table:
            raise DuplicateRegistrationError(f"{vocabulary} name {name!r} registered by plugin "
                                             f"{table[name]!r} and again by plugin {self.plugin!r}")
        table[name] = self.plugin

    def map_aten(self, target: Any, kind: str, normalize: Normalizer | None = None, *,
                 override: bool = False) -> None:
        """Map an ATen/fx call target (``torch.ops.aten.linear.default``, or its string name
        ``"aten.linear.default"``) to ``kind``. ``normalize`` defaults to "args as inputs"."""
        _put(self._registry.aten, target_name(target), Mapping(kind, normalize, self.plugin),
             "ATen target", override)

    def map_onnx(self, op_type: str, kind: str, normalize: Normalizer | None = None, *,
                 domain: str = "", override: bool = False) -> None:
        """Map an ONNX node type (in ``domain``) to ``kind``."""
        key = f"{domain}::{op_type}" if domain else op_type
        _put(self._registry.onnx, key, Mapping(kind, normalize, self.plugin), "ONNX op", override)

    def add_leaf_module(self, module_type: type | str, kind: str, rule: Rule | None = None, *,
                        module_attrs: Callable[[Any], dict] | None = None, override: bool = False,
                        **declaration: Any) -> None:
        """Treat every call of ``module_type`` as one op of ``kind``, lowered by ``rule``
        (registered as the kind's rule when given). The op's ``attrs["params"]`` holds every
        parameter and buffer of the module by local name (used in the call or not: a module
        that caches an expanded weight still shows its free parameters), ``attrs["inner"]`` the
        constant arguments of the calls inside. ``module_attrs(module) -> dict`` (plain data:
        numbers, strings, tuples, tensors) is called on the module object when the compiler has
        it (an ``nn.Module`` was compiled) and its result stored as ``attrs["module_attrs"]``
        (None when compiling an exported program, which keeps no module objects). Keyword
        ``declaration`` (``input_axis=1``, ``attributes=()``...) goes to :meth:`add_rule`."""
        name = module_type if isinstance(module_type, str) else module_type_name(module_type)
        _put(self._registry.leaf_modules, name, Mapping(kind, None, self.plugin, module_attrs), "leaf module",
             override)
        if rule is not None:
            self.add_rule(kind, rule, override=override, **declaration)
        elif declaration:
            raise TypeError(f"leaf module {name!r}: a declaration ({', '.join(declaration)}) needs the rule")


def target_name(target: Any) -> str:
    """A stable string for an fx call target."""
    if isinstance(target, str):
        return target
    name = getattr(target, "name", None)
    if callable(name):  # torch OpOverload: "aten::linear" + overload
        return str(target).replace("::", ".")
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', repr(target))}"


def module_type_name(module_type: type) -> str:
    return f"{module_type.__module__}.{module_type.__qualname__}"


def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(Hookspecs)
    return pm


def load_registry(extra_plugins: list[Any] | None = None, *, entry_points: bool = True) -> Registry:
    """Build a registry from the built-in plugins (:func:`builtin_plugins`, always), third-party
    entry points (filtered by ``GMN_COMPILER_PLUGINS``) and ``extra_plugins`` (modules or
    objects with hookimpls), registered in that order."""
    pm = plugin_manager()
    for module in builtin_plugins():
        pm.register(module, name=module.__name__)
    if entry_points:
        _load_entry_points(pm)
    for plugin in extra_plugins or []:
        pm.register(plugin, name=getattr(plugin, "__name__", None) or type(plugin).__name__)
    registry = Registry()
    for impl in pm.hook.gmn_register.get_hookimpls():  # registration order: built-ins first
        registry.plugins.append(impl.plugin_name)
        impl.function(registry=Registrar(registry, impl.plugin_name))
    return registry


def builtin_plugins() -> list[Any]:
    """The built-in plugin modules in load order (``gmn_plugins.DEFAULT_PLUGINS``), from the
    :data:`BUILTINS_GROUP` entry points of this distribution's metadata (in declaration order;
    ``GMN_COMPILER_PLUGINS`` does not apply). ``RuntimeError`` when the metadata declares none
    (the package is not installed: ``pip install -e .``)."""
    try:
        declared = importlib.metadata.distribution(DISTRIBUTION).entry_points
    except importlib.metadata.PackageNotFoundError:
        declared = ()
    found = [ep for ep in declared if ep.group == BUILTINS_GROUP]
    if not found:
        raise RuntimeError(f"no {BUILTINS_GROUP!r} entry point in the metadata of {DISTRIBUTION!r}: "
                           "the built-in rules cannot be found; install the package "
                           "(pip install -e .) so that its entry points are declared")
    return [plugin for ep in found for plugin in ep.load()]


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = os.environ.get("GMN_COMPILER_PLUGINS")
    if allowed is not None and allowed.strip().lower() == "none":
        return
    if allowed is None:
        pm.load_setuptools_entrypoints(PROJECT)
        return
    for name in [n.strip() for n in allowed.split(",") if n.strip()]:
        pm.load_setuptools_entrypoints(PROJECT, name=name)


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, loaded lazily on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_registry()
    return _DEFAULT


def reset_default_registry() -> None:
    global _DEFAULT
    _DEFAULT = None
