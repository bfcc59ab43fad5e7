"""INR editing: the image edits and a differentiable way back from a parameter
graph's edge values to the picture an INR draws.

An editing metanetwork (``gmn_models.model.EditGMN``: θ' = θ + γΔ) returns new values for a
graph's edges; :class:`Architectures` turns them into the INR's parameters
(``ParameterGraph.to_state_dict``, differentiable in the values) and evaluates the INR at the
signal's coordinates (``torch.func.functional_call``), so the loss is the MSE between the edited
INR's picture and the edited image. The experiment is :mod:`.editing`.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import gmn_compiler as gc

from .families import inr

EDITS = ("dilate", "contrast")


def dilate(images: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Grey-level morphological dilation of ``[N, H, W]`` images with a ``size`` x ``size``
    square (the NFN / GMN papers' MNIST edit): each pixel becomes its window's maximum."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"dilation needs an odd window size, got {size}")
    return F.max_pool2d(images[:, None], size, stride=1, padding=size // 2)[:, 0]


def contrast(images: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
    """Intensities in [0, 1] pushed away from 0.5 by ``factor`` and clipped to [0, 1]."""
    return ((images - 0.5) * factor + 0.5).clamp(0.0, 1.0)


def apply_edit(name: str, images: torch.Tensor) -> torch.Tensor:
    """Edit ``name`` (one of :data:`EDITS`) of ``[N, H, W]`` images."""
    if name not in EDITS:
        raise ValueError(f"unknown edit {name!r}; expected one of {list(EDITS)}")
    return dilate(images) if name == "dilate" else contrast(images)


class Architectures:
    """One INR module (and, on request, its compiled parameter graph) per architecture, keyed by
    the rows' builder kwargs; renders INRs from state dicts."""

    def __init__(self) -> None:
        self._modules: dict[str, nn.Module] = {}
        self._graphs: dict[str, gc.ParameterGraph] = {}

    @staticmethod
    def key(row: dict) -> str:
        return json.dumps(row["builder_kwargs"], sort_keys=True)

    def module(self, row: dict) -> nn.Module:
        key = self.key(row)
        if key not in self._modules:
            self._modules[key] = inr(**row["builder_kwargs"]).eval()
        return self._modules[key]

    def graph(self, row: dict) -> gc.ParameterGraph:
        """The parameter graph of the row's architecture, compiled from its ``input_shape``
        (the edge order of every compiled INR of that architecture)."""
        key = self.key(row)
        if key not in self._graphs:
            shape = json.loads(row["input_shape"]) if isinstance(row["input_shape"], str) else row["input_shape"]
            self._graphs[key] = gc.compile(self.module(row), (torch.zeros(shape),))
        return self._graphs[key]

    def render(self, row: dict, state: dict[str, torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """The INR's output ``[P]`` at ``coords`` with parameters ``state`` (differentiable)."""
        return functional_call(self.module(row), state, (coords,))[:, 0]

    def render_values(self, row: dict, edge_values: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """The INR's output ``[P]`` with the parameters that one value per edge of its
        architecture's graph gives (``to_state_dict``; gradients flow to the values)."""
        return self.render(row, self.graph(row).to_state_dict(edge_values), coords)
