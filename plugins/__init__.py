"""Built-in lowering rules, one module per op family.

Each module is an ordinary pluggy plugin with a ``gmn_register`` hookimpl, registered through
exactly the path a third-party plugin uses; :data:`DEFAULT_PLUGINS` lists them in load order.
:func:`gmn_compiler.registry.load_registry` finds this list through the entry point
``gmn_compiler.builtins`` (``pyproject.toml``) and loads it first, always; the registry never
imports this package, which imports it (through :mod:`gmn_compiler.rules`).
"""

from . import (activations, attention, concat, constants, conv, elementwise, embedding, gather_elements,
               group_conv, linear, moe, norms, padding, pooling, rearrange, recurrent, resize, structural)

DEFAULT_PLUGINS = [linear, conv, norms, activations, elementwise, structural, concat, padding, pooling,
                   constants, attention, embedding, group_conv, resize, recurrent, rearrange,
                   gather_elements, moe]
