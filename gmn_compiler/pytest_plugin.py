"""pytest plugin (entry point ``pytest11``): the ``gmn_oracles`` fixture for plugin authors.

Installed with gmn-compiler, so any test suite gets the fixture without a ``conftest.py``.
pytest loads this module in every session, so it imports nothing heavy: torch and the
compiler load only when a test asks for the fixture.
"""

from __future__ import annotations

from types import ModuleType

import pytest


@pytest.fixture
def gmn_oracles() -> ModuleType:
    """The correctness oracles of :mod:`gmn_compiler.testing`: ``assert_round_trip``,
    ``assert_sound``, ``assert_complete``, ``assert_swap_faithful``, ``assert_oracles`` (all
    of them on a randomized copy) and ``randomized``. Each takes the model, its example
    inputs and :func:`gmn_compiler.compile`'s options (``registry=load_registry([MyPlugin()])``
    to test a plugin that is not installed) and raises
    :class:`~gmn_compiler.errors.SymmetryError`, an ``AssertionError``, on failure."""
    from gmn_compiler import testing

    return testing
