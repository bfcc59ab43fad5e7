"""The model folder writer, re-exported: the format and its writer live in
:mod:`gmn_models.model_folder` (the one module that knows the format); this name is kept for
code that imports it from here."""

from __future__ import annotations

from ..model_folder import RESERVED_COLUMNS, ModelEntry, _plain, write_model_folder  # noqa: F401

__all__ = ["RESERVED_COLUMNS", "ModelEntry", "write_model_folder"]
