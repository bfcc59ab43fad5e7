"""Offline datasets for the model zoo, with fixed seeded train/test splits.

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download),
  scaled to [0, 1] and standardised with the training split's mean and std (one scalar each,
  so the image structure is kept); split 1,347 train / 450 test by a permutation seeded 0.
* ``mnist1d``: the MNIST-1D dataset (Greydanus 2020) generated locally by the ``mnist1d``
  package's own ``make_dataset`` with its default arguments (templates are built in; nothing
  is downloaded): 5,000 sequences of length 40, split 4,000 / 1,000 as the package does.
  The package seeds numpy's global RNG; we save and restore it around the call.

Every split is returned flat (``[N, D]`` float32, labels ``[N]`` int64); :func:`to_layout`
reshapes inputs for a family (image, sequence, set).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np
import torch

DATASETS = ("digits", "mnist1d")
LAYOUTS = ("flat", "image", "seq", "set")
NUM_CLASSES = 10


@dataclass(frozen=True)
class Split:
    """A dataset's fixed split: ``x_*`` float32 ``[N, D]``, ``y_*`` int64 ``[N]`` in 0..9."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def features(self) -> int:
        return self.x_train.shape[1]


def _digits() -> Split:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1347], perm[1347:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return Split("digits", x[train], y[train], x[test], y[test])


def _mnist1d() -> Split:
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())  # local generation from built-in templates
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    i64 = lambda a: torch.tensor(np.asarray(a), dtype=torch.int64)  # noqa: E731
    return Split("mnist1d", f32(d["x"]), i64(d["y"]), f32(d["x_test"]), i64(d["y_test"]))


@functools.lru_cache(maxsize=None)
def load(name: str) -> Split:
    """The fixed split of dataset ``name`` (one of :data:`DATASETS`); cached per process.
    Callers must not modify the returned tensors."""
    if name == "digits":
        return _digits()
    if name == "mnist1d":
        return _mnist1d()
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def sample_shape(name: str, layout: str) -> list[int]:
    """Shape of one input example (no batch axis) of dataset ``name`` in ``layout``:
    ``flat`` ``[D]``, ``image`` ``[1, 8, 8]`` (digits only), ``seq`` ``[1, D]``,
    ``set`` ``[D, 1]``."""
    d = {"digits": 64, "mnist1d": 40}[name]
    if layout == "flat":
        return [d]
    if layout == "image":
        if name != "digits":
            raise ValueError(f"dataset {name!r} has no image layout")
        return [1, 8, 8]
    if layout == "seq":
        return [1, d]
    if layout == "set":
        return [d, 1]
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def to_layout(x: torch.Tensor, name: str, layout: str) -> torch.Tensor:
    """Reshape flat inputs ``[N, D]`` of dataset ``name`` to ``[N, *sample_shape(name, layout)]``
    (a view, no copy)."""
    return x.reshape(x.shape[0], *sample_shape(name, layout))
