"""INR editing, first part: the image edits and a differentiable way back from a parameter
graph's edge values to the picture an INR draws.

An editing metanetwork (``gmn_models.model.EditGMN``: θ' = θ + γΔ) returns new values for a
graph's edges; :class:`Renderer` turns them into the INR's parameters
(``ParameterGraph.to_state_dict``, differentiable in the values) and evaluates the INR at the
signal's coordinates (``torch.func.functional_call``), so the loss is the MSE between the edited
INR's picture and the edited image. The editing experiment itself (training, baselines, the
results table) is not built yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class Renderer:
    """Draws INRs of one architecture (``inr(**builder_kwargs)``) from edge values of its
    parameter graph. ``example_shape`` must be the model folder's ``input_shape`` (the graphs of
    a folder's INRs share the edge order of the graph compiled from that shape)."""

    def __init__(self, builder_kwargs: dict, coords: torch.Tensor, example_shape: tuple[int, ...] = (2, 2)):
        self.module = inr(**builder_kwargs).eval()
        self.coords = coords
        self.graph = gc.compile(self.module, (torch.zeros(example_shape),))

    def parameters_from(self, edge_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The INR's parameters from one value per edge (gradients flow to the values)."""
        return self.graph.to_state_dict(edge_values)

    def render(self, edge_values: torch.Tensor) -> torch.Tensor:
        """The INR's output ``[P, out]`` at the coordinates."""
        return functional_call(self.module, self.parameters_from(edge_values), (self.coords,))
