"""A catalogue of real architectures built small from their libraries' own classes and configs,
with random weights (nothing is downloaded): ``CATALOGUE`` maps a family name (as issue 17 names
it) to an :class:`~real_models.base.Architecture`. Used by the heavy coverage tests
(``tests/test_heavy_coverage.py``) and by ``python bench/coverage_table.py``, which writes
``docs/coverage.md``."""

from real_models import timm_models, timm_more, torch_models, transformers_models, transformers_more  # noqa: F401,E501  (register)
from real_models.base import CATALOGUE, Architecture

__all__ = ["CATALOGUE", "Architecture"]
