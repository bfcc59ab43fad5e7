"""Shared pieces of the catalogue of real architectures (see ``real_models/__init__.py``).

A catalogue of real architectures, each built small from its library's own classes and
configs with random weights (nothing is downloaded), for the heavy coverage tests
(``tests/test_heavy_coverage.py``) and the coverage table (``python bench/coverage_table.py`` writes
``docs/coverage.md``).

Every entry is an :class:`Architecture`: ``build()`` returns ``(model, example_inputs)``, the model
in eval mode with every parameter and floating buffer randomised (library initialisations zero
biases and set norms to 1 / 0, which would hide swapped or mis-attributed edges from the
oracles). ``timm`` and ``transformers`` are imported inside the builders, so this module imports
without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from gmn_compiler.testing import randomized as _randomized

WIDTH = 16
HEADS = 2
VOCAB = 50
POSITIONS = 32
SEQ = 8


@dataclass(frozen=True)
class Architecture:
    """One real architecture: ``family`` as the issue names it, ``source`` the class it is built
    from, ``build`` returns ``(model, example_inputs)``; ``oracle`` holds options for
    :func:`gmn_compiler.check_symmetry` (tolerances where a model computes part of its forward
    in float32 even in a float64 copy)."""

    family: str
    library: str
    source: str
    build: Callable[[], tuple[nn.Module, tuple]]
    oracle: dict = field(default_factory=dict)


CATALOGUE: dict[str, Architecture] = {}


def register(family: str, library: str, source: str, **oracle):
    def add(build):
        if family in CATALOGUE:
            raise ValueError(f"family {family!r} is registered twice")
        CATALOGUE[family] = Architecture(family, library, source, build, oracle)
        return build
    return add


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy with every floating parameter and buffer drawn at random (standard deviation 0.3,
    so that deep stacks neither saturate nor blow up), in eval mode."""
    return _randomized(model, seed, scale=0.3)


def token_ids(seq: int = SEQ, vocab: int = VOCAB) -> torch.Tensor:
    # ids from 2 up: 0 / 1 are padding ids in some configs (RoBERTa, OPT), which a random
    # example would otherwise hit and turn into a masked position
    return torch.randint(2, vocab, (1, seq), generator=torch.Generator().manual_seed(1))


def image(size: int, channels: int = 3) -> torch.Tensor:
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(1))


class _Output(nn.Module):
    """Calls a Hugging Face model with keyword inputs and returns one tensor of its output."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], output: str = "last_hidden_state"):
        super().__init__()
        self.model, self.names, self.output = model, names, output

    def forward(self, *inputs):
        return getattr(self.model(**dict(zip(self.names, inputs))), self.output)


def hf(model: nn.Module, inputs: tuple, names: tuple[str, ...] = ("input_ids",),
        output: str = "last_hidden_state") -> tuple[nn.Module, tuple]:
    return randomized(_Output(model, names, output)), inputs


def tf():
    import transformers

    return transformers


def timm():
    import timm

    return timm
