"""Regenerate the bundled example models (torch.export archives, deterministic).

    python examples/make_examples.py

writes ``examples/small_cnn.pt2`` (conv + batchnorm + relu + pool + linear, 1.6k parameters,
input ``[1, 3, 16, 16]``) and ``examples/mlp.pt2`` (two hidden layers, input ``[1, 8]``).
``small_cnn()`` and ``mlp()`` rebuild the exact models (same seed), so tests can compare a
compiled example with the weights it came from.
"""

from __future__ import annotations

import os

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


def small_cnn() -> nn.Module:
    """The example CNN in eval mode; BatchNorm statistics calibrated on seeded random data."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    model.train()
    with torch.no_grad():
        for _ in range(4):  # non-trivial running statistics
            model(torch.randn(8, 3, 16, 16))
    return model.eval()


def small_cnn_input() -> tuple[torch.Tensor]:
    return (torch.zeros(1, 3, 16, 16),)


def mlp() -> nn.Module:
    """The example MLP (8 -> 16 -> 16 -> 4, ReLU), in eval mode."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 4)).eval()


def mlp_input() -> tuple[torch.Tensor]:
    return (torch.zeros(1, 8),)


EXAMPLES = {"small_cnn.pt2": (small_cnn, small_cnn_input), "mlp.pt2": (mlp, mlp_input)}


def main(folder: str = HERE) -> list[str]:
    """Export every example into ``folder``; returns the written paths."""
    written = []
    for name, (build, inputs) in EXAMPLES.items():
        path = os.path.join(folder, name)
        torch.export.save(torch.export.export(build(), inputs()), path)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main():
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
