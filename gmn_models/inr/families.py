"""INR architectures: coordinate MLPs with sine, ReLU or GELU layers, optionally after random
Fourier features.

:func:`inr` is a registered model builder (``gmn_models.inr.families:inr``), so a generated INR
zoo is an ordinary model folder that ``gmn-compile`` and the GMN datasets read.

``depth`` hidden layers of ``width`` units, then a linear output. A hidden layer is
``h = act(linear(h))``: ``sine`` is SIREN's ``sin(w0 * .)`` with SIREN initialisation, ``relu``
and ``gelu`` the usual. ``fourier=True`` maps the coordinates to random Fourier features first,
``h = cat(sin(2 pi B x), cos(2 pi B x))`` with ``B`` (``fourier.weight``, ``[width/2, in]``,
drawn N(0, ``fourier_scale``²), never trained): without them a ReLU or GELU MLP fits a 28x28
digit barely better than a blank image. ``layer_norm=True`` puts a LayerNorm (with affine
parameters) after every hidden layer's activation (before it, a SIREN's pre-activations are
rescaled to unit variance and ``sin(30 .)`` of them is noise). The standard setting of the literature (DWSNets, NFN) is
``inr(width=32, depth=2, activation="sine", w0=30)``: 2 -> 32 -> 32 -> 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = ("sine", "relu", "gelu")
FROZEN = ("fourier.weight",)  # parameters an INR fit never updates


class INR(nn.Module):
    """A coordinate MLP (module docstring). Parameters: ``fourier.weight`` (``fourier`` only),
    ``hidden.{i}.weight/bias``, ``norms.{i}.weight/bias`` (``layer_norm``), ``out.weight/bias``."""

    def __init__(self, in_features: int = 2, out_features: int = 1, width: int = 32, depth: int = 2,
                 activation: str = "sine", w0: float = 30.0, layer_norm: bool = False,
                 fourier: bool = False, fourier_scale: float = 3.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"INR: unknown activation {activation!r}; expected one of {list(ACTIVATIONS)}")
        if depth < 1 or width < 2 or (fourier and width % 2):
            raise ValueError(f"INR: need depth >= 1 and width >= 2 (even with Fourier features), got {depth}, {width}")
        self.activation, self.w0, self.use_fourier = activation, float(w0), bool(fourier)
        first = in_features
        if fourier:
            self.fourier = nn.Linear(in_features, width // 2, bias=False)
            first = width
        self.hidden = nn.ModuleList(nn.Linear(first if i == 0 else width, width) for i in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth)) if layer_norm else None
        self.out = nn.Linear(width, out_features)
        self.reset_parameters(fourier_scale)

    @torch.no_grad()
    def reset_parameters(self, fourier_scale: float = 3.0) -> None:
        """SIREN initialisation for sine layers (first layer U(±1/in), later U(±sqrt(6/in)/w0));
        PyTorch's default otherwise; ``B ~ N(0, fourier_scale²)``."""
        if self.use_fourier:
            self.fourier.weight.normal_(0.0, fourier_scale)
        if self.activation != "sine":
            return
        for i, layer in enumerate(self.hidden):
            fan_in = layer.in_features
            bound = 1 / fan_in if i == 0 and not self.use_fourier else math.sqrt(6 / fan_in) / self.w0
            layer.weight.uniform_(-bound, bound)
        fan_in = self.out.in_features
        self.out.weight.uniform_(-math.sqrt(6 / fan_in) / self.w0, math.sqrt(6 / fan_in) / self.w0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_fourier:
            z = 2 * math.pi * self.fourier(x)
            x = torch.cat([torch.sin(z), torch.cos(z)], -1)
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.activation == "sine":
                x = torch.sin(self.w0 * x)
            elif self.activation == "gelu":
                x = nn.functional.gelu(x)
            else:
                x = torch.relu(x)
            if self.norms is not None:
                x = self.norms[i](x)
        return self.out(x)


def inr(**kwargs) -> INR:
    """The registered builder: ``INR(**kwargs)``."""
    return INR(**kwargs)


STANDARD = {"in_features": 2, "out_features": 1, "width": 32, "depth": 2, "activation": "sine", "w0": 30.0}


def linear_weights(state: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The weights and biases of an INR without LayerNorm or Fourier layer, input to output
    (what NFN's weight-space features hold). ``ValueError`` for other INRs."""
    extra = [k for k in state if not k.startswith(("hidden.", "out."))]
    if extra:
        raise ValueError(f"not a plain MLP INR: it has {extra[:3]}")
    depth = len([k for k in state if k.startswith("hidden.") and k.endswith(".weight")])
    names = [f"hidden.{i}" for i in range(depth)] + ["out"]
    return [state[f"{n}.weight"] for n in names], [state[f"{n}.bias"] for n in names]


def permute_hidden_units(state: dict[str, torch.Tensor], layer: int, perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """A copy of an INR's ``state`` with hidden layer ``layer``'s units reordered by ``perm``
    (its weight rows and bias, its LayerNorm's affine parameters, the next layer's weight
    columns): the same function, other weights (the symmetry an equivariant metanetwork
    must respect)."""
    out = dict(state)
    nxt = f"hidden.{layer + 1}" if f"hidden.{layer + 1}.weight" in state else "out"
    for name in (f"hidden.{layer}.weight", f"hidden.{layer}.bias", f"norms.{layer}.weight", f"norms.{layer}.bias"):
        if name in state:
            out[name] = state[name][perm]
    out[f"{nxt}.weight"] = state[f"{nxt}.weight"][:, perm]
    return out
