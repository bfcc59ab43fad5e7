"""The Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights").

What a dataset folder holds (the public release: one folder per dataset, e.g. ``cifar10/``):

- ``weights.npy``: float array ``[num_models, num_params]``; each row is every parameter of one
  CNN, flattened variable by variable in TensorFlow/Keras layout (conv kernels ``[kh, kw, in,
  out]`` = HWIO, dense kernels ``[in, out]``). It is ~5 GB per dataset, so it is opened with
  ``numpy.load(mmap_mode="r", allow_pickle=False)`` and read one row at a time.
- ``layout.csv``: one row per parameter tensor. Assumed columns (a header row): ``varname``,
  ``start_idx``, ``end_idx`` (the tensor is ``row[start_idx:end_idx]``), ``shape`` (a Python
  tuple literal such as ``(3, 3, 1, 16)``, parsed with ``ast.literal_eval``, never ``eval``);
  ``size`` is checked when present; other columns (a pandas index column) are ignored. Rows may
  come in any order: tensors are ordered by ``start_idx`` and must tile ``[0, num_params)``.
  Varnames are Keras variable names ending in ``kernel:0`` or ``bias:0`` (e.g.
  ``sequential/conv2d/kernel:0``); a kernel and a bias with the same prefix form one layer.
- ``metrics.csv.gz`` (or ``metrics.csv``): one row per row of ``weights.npy``, same order, with
  ``test_accuracy``, ``train_accuracy``, ``test_loss``, ``train_loss``, ``step`` and the
  hyperparameters ``config.activation``, ``config.dataset``, ``config.dropout``, ...

Sources for these assumptions: the dataset README in google-research/dnn_predict_accuracy (file
names, metric columns, 4,970 parameters), its ``train_network.py`` (the architecture), and the
loader of the NFN project (``experiments/data_utils.py``: the layout columns, the
``kernel:0``/``bias:0`` suffixes, the HWIO -> OIHW transpose, ``step == 86`` as the final
checkpoint). No actual ``layout.csv`` was inspected: the exact varnames are unverified, which is
why only their suffix and prefix are used.

The network (``build_cnn`` in ``train_network.py``, architecture ``"cnn"``): three
``Conv2D(16, 3, strides=2)`` layers with Keras's default ``padding="valid"`` and the activation
of ``config.activation`` (relu, tanh, sigmoid or selu), dropout between them (inactive at
inference, so absent here), ``GlobalAveragePooling2D``, ``Dense(10)`` giving logits. Inputs are
grayscale (1 channel): 28x28 for mnist / fashion_mnist, 32x32 for cifar10 / svhn_cropped, scaled
to [-1, 1] and averaged over RGB before training. Torch's ``Conv2d(padding=0, stride=2)`` on NCHW
computes exactly TF's ``VALID`` stride-2 convolution on NHWC once the kernel is transposed HWIO
-> OIHW (``kernel.transpose(3, 2, 0, 1)``); the dense kernel is transposed ``[in, out]`` ->
``[out, in]``. The ``"cnnbn"`` variant (batch norm) is not in the release and is refused.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import math
import os
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..paths import confined_path
from ..model_folder import ModelEntry, write_model_folder

BUILDER = "gmn_models.public_zoos:SmallCNN"

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "selu": nn.SELU, "elu": nn.ELU,
    "softplus": nn.Softplus, "linear": nn.Identity,
}
"""Keras activation names the zoo's ``config.activation`` may hold -> torch modules (Keras's
selu and elu use the same constants as torch's)."""

IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "mnist": (28, 28), "fashion_mnist": (28, 28), "cifar10": (32, 32), "svhn_cropped": (32, 32),
}
"""``config.dataset`` (a TFDS name) -> input height and width."""

_VARNAME = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<kind>kernel|bias)(?::\d+)?$")


class SmallCNN(nn.Module):
    """The Small CNN Zoo network in PyTorch layout.

    ``convs[i]``: ``Conv2d(channels[i-1], channels[i], kernel_size, stride, padding=0)``
    (``channels[-1]`` of the previous layer; ``in_channels`` for the first), each followed by
    ``activation``; then the mean over height and width (global average pooling) and
    ``dense = Linear(channels[-1], num_classes)`` giving logits. State dict keys:
    ``convs.{i}.weight`` ``[out, in, kh, kw]``, ``convs.{i}.bias``, ``dense.weight``
    ``[num_classes, channels[-1]]``, ``dense.bias``. Input ``[batch, in_channels, H, W]``.
    """

    def __init__(self, in_channels: int = 1, channels: list[int] | tuple[int, ...] = (16, 16, 16),
                 num_classes: int = 10, kernel_size: int = 3, stride: int = 2,
                 activation: str = "relu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"SmallCNN: unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
        if not channels:
            raise ValueError("SmallCNN: channels must name at least one conv layer")
        self.in_channels, self.channels = int(in_channels), [int(c) for c in channels]
        self.num_classes, self.kernel_size, self.stride = int(num_classes), int(kernel_size), int(stride)
        self.activation = activation
        widths = [self.in_channels] + self.channels
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], self.kernel_size, self.stride)
                                   for i in range(len(self.channels)))
        self.act = ACTIVATIONS[activation]()
        self.dense = nn.Linear(self.channels[-1], self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.act(conv(x))
        return self.dense(x.mean(dim=(2, 3)))

    def builder_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this architecture (JSON-serialisable)."""
        return {"in_channels": self.in_channels, "channels": list(self.channels),
                "num_classes": self.num_classes, "kernel_size": self.kernel_size,
                "stride": self.stride, "activation": self.activation}


@dataclass(frozen=True)
class LayoutTensor:
    """One row of ``layout.csv``: ``row[start:end]`` reshaped to ``shape`` (TF layout)."""

    varname: str
    start: int
    end: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SmallCNNLayout:
    """The parsed ``layout.csv``: conv layers in order, then the dense layer, as
    ``(kernel, bias)`` pairs; ``num_params`` is the row length it describes."""

    convs: tuple[tuple[LayoutTensor, LayoutTensor], ...]
    dense: tuple[LayoutTensor, LayoutTensor]
    num_params: int

    def architecture(self) -> dict[str, Any]:
        """``SmallCNN`` keyword arguments implied by the shapes (all but stride/activation)."""
        kh, kw, cin, _ = self.convs[0][0].shape
        return {"in_channels": cin, "channels": [k.shape[3] for k, _ in self.convs],
                "num_classes": self.dense[0].shape[1], "kernel_size": kh}

    def state_dict(self, row: np.ndarray) -> dict[str, torch.Tensor]:
        """``SmallCNN`` state dict of one ``weights.npy`` row (HWIO -> OIHW, [in, out] -> [out, in])."""
        out: dict[str, torch.Tensor] = {}
        for i, (kernel, bias) in enumerate(self.convs):
            hwio = row[kernel.start:kernel.end].reshape(kernel.shape)
            out[f"convs.{i}.weight"] = _tensor(hwio.transpose(3, 2, 0, 1))
            out[f"convs.{i}.bias"] = _tensor(row[bias.start:bias.end])
        kernel, bias = self.dense
        out["dense.weight"] = _tensor(row[kernel.start:kernel.end].reshape(kernel.shape).T)
        out["dense.bias"] = _tensor(row[bias.start:bias.end])
        return out


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def read_small_cnn_layout(path: str | os.PathLike) -> SmallCNNLayout:
    """Parse and check a Small CNN Zoo ``layout.csv`` (format in the module docstring).

    Raises ``ValueError`` (one line: which file, which row, what to do) for a missing file or
    column, an unparsable or inconsistent row, tensors that do not tile the row, a varname
    that is neither a kernel nor a bias, or shapes that do not chain into the zoo's
    conv-conv-...-dense network.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: layout.csv not found; a Small CNN Zoo folder holds weights.npy, "
                         "layout.csv and metrics.csv.gz side by side")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"varname", "start_idx", "end_idx", "shape"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected a header with "
                             "varname, start_idx, end_idx, shape (size optional)")
        tensors = [_layout_row(path, line, row) for line, row in enumerate(reader, start=2)]
    if not tensors:
        raise ValueError(f"{path}: no parameter rows")
    tensors.sort(key=lambda t: t.start)
    position = 0
    for t in tensors:
        if t.start != position:
            raise ValueError(f"{path}: {t.varname} starts at {t.start} but the previous tensor ends at "
                             f"{position}; tensors must tile the weight row without gaps or overlaps")
        position = t.end
    layers: dict[str, dict[str, LayoutTensor]] = {}
    for t in tensors:
        match = _VARNAME.match(t.varname)
        if match is None:
            raise ValueError(f"{path}: unknown varname {t.varname!r}; only Keras conv/dense variables "
                             "ending in kernel:0 or bias:0 are understood (the zoo's 'cnn' architecture; "
                             "batch-norm variants are not supported)")
        layer = layers.setdefault(match["prefix"], {})
        if match["kind"] in layer:
            raise ValueError(f"{path}: two {match['kind']} tensors for layer {match['prefix']!r}")
        layer[match["kind"]] = t
    pairs = []
    for prefix, layer in layers.items():  # ordered by first start_idx
        if set(layer) != {"kernel", "bias"}:
            raise ValueError(f"{path}: layer {prefix!r} has {sorted(layer)} but needs a kernel and a bias")
        pairs.append((layer["kernel"], layer["bias"]))
    return _check_chain(path, pairs, position)


def _layout_row(path: Path, line: int, row: dict[str, str]) -> LayoutTensor:
    where = f"{path}, line {line}"
    try:
        start, end = int(row["start_idx"]), int(row["end_idx"])
        shape = ast.literal_eval(row["shape"].strip())
    except (ValueError, SyntaxError, TypeError, AttributeError):
        raise ValueError(f"{where}: cannot parse start_idx/end_idx/shape ({row.get('start_idx')!r}, "
                         f"{row.get('end_idx')!r}, {row.get('shape')!r}); expected integers and a "
                         "tuple literal such as (3, 3, 1, 16)") from None
    shape = (shape,) if isinstance(shape, int) else shape
    if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"{where}: shape {row['shape']!r} is not a tuple of positive integers")
    size = math.prod(shape)
    if start < 0 or end - start != size or (row.get("size") not in (None, "") and int(row["size"]) != size):
        raise ValueError(f"{where}: start_idx {start}, end_idx {end}, size {row.get('size')!r} and "
                         f"shape {tuple(shape)} disagree; end_idx - start_idx must equal the shape's product")
    return LayoutTensor(row["varname"].strip(), start, end, tuple(shape))


def _check_chain(path: Path, pairs: list, num_params: int) -> SmallCNNLayout:
    *convs, dense = pairs
    if not convs or any(len(k.shape) != 4 for k, _ in convs) or len(dense[0].shape) != 2:
        shapes = [k.shape for k, _ in pairs]
        raise ValueError(f"{path}: kernel shapes {shapes} are not conv layers ([kh, kw, in, out]) followed "
                         "by one dense layer ([in, out]), the Small CNN Zoo architecture")
    width = convs[0][0].shape[2]
    size = convs[0][0].shape[0]
    for kernel, bias in pairs:
        rank = len(kernel.shape)
        cin, cout = kernel.shape[rank - 2], kernel.shape[rank - 1]
        if cin != width or bias.shape != (cout,) or (rank == 4 and kernel.shape[:2] != (size, size)):
            raise ValueError(f"{path}: {kernel.varname} {kernel.shape} / {bias.varname} {bias.shape} do not "
                             f"chain: expected {width} input channels, a bias of its {cout} outputs and "
                             f"{size}x{size} kernels throughout")
        width = cout
    return SmallCNNLayout(tuple(convs), dense, num_params)


def _own_file(folder: Path, name: str) -> Path:
    """``folder / name``, refused if a symbolic link takes it outside the folder."""
    return confined_path(folder, name, name, kind="Small CNN Zoo folder",
                         rule="the zoo's files must live inside it")


def _metrics_path(folder: Path) -> Path:
    for name in ("metrics.csv.gz", "metrics.csv"):
        if (folder / name).is_file():
            return _own_file(folder, name)
    raise ValueError(f"{folder}: metrics.csv.gz not found; a Small CNN Zoo folder holds weights.npy, "
                     "layout.csv and metrics.csv.gz side by side")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, newline="", encoding="utf-8")


def _parse_cell(text: str) -> Any:
    """A metrics cell as int, float, bool, None (empty) or the string itself."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class _Zoo:
    folder: Path
    layout: SmallCNNLayout
    weights: np.ndarray
    metrics: Path
    header: list[str]


def _open_zoo(folder: str | os.PathLike) -> _Zoo:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder; pass a Small CNN Zoo dataset folder (e.g. cifar10/)")
    layout = read_small_cnn_layout(_own_file(folder, "layout.csv"))
    weights_path = _own_file(folder, "weights.npy")
    if not weights_path.is_file():
        raise ValueError(f"{weights_path}: weights.npy not found; a Small CNN Zoo folder holds weights.npy, "
                         "layout.csv and metrics.csv.gz side by side")
    try:
        weights = np.load(weights_path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{weights_path}: not a plain numpy array file ({error})") from None
    if weights.ndim != 2 or weights.dtype.kind != "f":
        raise ValueError(f"{weights_path}: expected a 2-D float array [num_models, num_params], "
                         f"got shape {weights.shape} dtype {weights.dtype}")
    if weights.shape[1] != layout.num_params:
        raise ValueError(f"{weights_path}: rows hold {weights.shape[1]} values but layout.csv describes "
                         f"{layout.num_params}; the two files come from different datasets or versions")
    metrics = _metrics_path(folder)
    with _open_text(metrics) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{metrics}: empty file; expected a header and one row per model")
        count = sum(1 for _ in reader)
    if count != weights.shape[0]:
        raise ValueError(f"{metrics}: {count} rows but weights.npy has {weights.shape[0]} models; "
                         "the rows must correspond one to one")
    return _Zoo(folder, layout, weights, metrics, header)


def load_small_cnn_zoo(folder: str | os.PathLike, limit: int | None = None, *,
                       steps: Collection[int] | None = None, skip_nonfinite: bool = True,
                       stride: int = 2, activation: str | None = None,
                       ) -> Iterator[tuple[SmallCNN, dict[str, Any]]]:
    """Iterate over the zoo's networks as ``(SmallCNN with the weights loaded, metrics)``.

    ``folder`` holds ``weights.npy``, ``layout.csv`` and ``metrics.csv.gz``; they are all
    checked before this returns (``ValueError`` otherwise), then models are read lazily, one
    ``weights.npy`` row at a time, in file order. ``metrics`` is that row of the metrics file,
    cells parsed to int/float/bool/str (empty -> None), plus ``weights_row`` (the row index).
    Modules are in eval mode, in ``weights.npy``'s dtype, with the exact stored values.

    ``limit``: stop after that many yielded models. ``steps``: keep only rows whose ``step``
    is in it (``{86}`` keeps the final checkpoints, the usual convention). ``skip_nonfinite``:
    skip rows holding NaN/inf (diverged runs). ``stride``: not recorded in the files; 2 in
    the release. ``activation``: overrides ``config.activation``, required when the metrics
    lack that column.
    """
    zoo = _open_zoo(folder)
    return _iterate(zoo, limit, _check_options(zoo, steps, activation), skip_nonfinite, stride, activation)


def _check_options(zoo: _Zoo, steps: Collection[int] | None, activation: str | None) -> set[float] | None:
    if steps is not None and "step" not in zoo.header:
        raise ValueError(f"{zoo.metrics}: no 'step' column, so steps={sorted(steps)} cannot be applied")
    if activation is None and "config.activation" not in zoo.header:
        raise ValueError(f"{zoo.metrics}: no 'config.activation' column; pass activation='relu' (or the "
                         "zoo's activation) explicitly")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    return None if steps is None else {float(s) for s in steps}


def _iterate(zoo: _Zoo, limit: int | None, steps: set[float] | None, skip_nonfinite: bool,
             stride: int, activation: str | None) -> Iterator[tuple[SmallCNN, dict[str, Any]]]:
    arch = zoo.layout.architecture()
    dtype = torch.from_numpy(np.zeros(0, dtype=zoo.weights.dtype)).dtype
    yielded = 0
    with _open_text(zoo.metrics) as handle:
        reader = csv.reader(handle)
        next(reader)
        for index, cells in enumerate(reader):
            if limit is not None and yielded >= limit:
                return
            if len(cells) != len(zoo.header):
                raise ValueError(f"{zoo.metrics}: row {index + 2} has {len(cells)} cells, the header "
                                 f"{len(zoo.header)}")
            metrics = {name: _parse_cell(cell) for name, cell in zip(zoo.header, cells)}
            if steps is not None and (not isinstance(metrics["step"], (int, float))
                                      or float(metrics["step"]) not in steps):
                continue
            row = np.array(zoo.weights[index])  # a copy: the memmap is read-only
            if skip_nonfinite and not np.isfinite(row).all():
                continue
            act = activation or metrics["config.activation"]
            if act not in ACTIVATIONS:
                raise ValueError(f"{zoo.metrics}: row {index + 2} has config.activation {act!r}; known: "
                                 f"{sorted(ACTIVATIONS)} (pass activation= to override)")
            model = SmallCNN(**arch, stride=stride, activation=act).to(dtype)
            model.load_state_dict(zoo.layout.state_dict(row), strict=True)
            metrics["weights_row"] = index
            yielded += 1
            yield model.eval(), metrics


def small_cnn_zoo_to_model_folder(folder: str | os.PathLike, out: str | os.PathLike, *,
                                  limit: int | None = None, steps: Collection[int] | None = None,
                                  skip_nonfinite: bool = True, stride: int = 2,
                                  activation: str | None = None,
                                  image_size: tuple[int, int] | None = None,
                                  overwrite: bool = False) -> Path:
    """Convert a Small CNN Zoo folder into a model folder at ``out``; return its ``models.csv``.

    Selection arguments as in :func:`load_small_cnn_zoo`. Columns after the reserved four:
    ``test_acc`` (the label: the row's ``test_accuracy``), ``weights_row``, then every metrics
    column under its own name. ``builder`` is ``gmn_models.public_zoos:SmallCNN`` with the
    row's activation; ``input_shape`` is ``[1, in_channels, H, W]`` with ``(H, W)`` from
    ``image_size`` or else from ``config.dataset`` (:data:`IMAGE_SIZES`).
    """
    zoo = _open_zoo(folder)
    models = _iterate(zoo, limit, _check_options(zoo, steps, activation), skip_nonfinite, stride, activation)
    zoo_folder = zoo.folder
    if "test_accuracy" not in zoo.header:
        raise ValueError(f"{zoo.metrics}: no 'test_accuracy' column, the label a model folder of this "
                         "zoo carries")
    if image_size is None and "config.dataset" not in zoo.header:
        raise ValueError(f"{zoo.metrics}: no 'config.dataset' column; pass image_size=(H, W) for the "
                         "input shape")

    def entries() -> Iterator[ModelEntry]:
        for model, metrics in models:
            size = image_size or IMAGE_SIZES.get(metrics["config.dataset"])
            if size is None:
                raise ValueError(f"{zoo_folder}: unknown config.dataset {metrics['config.dataset']!r} "
                                 f"(known: {sorted(IMAGE_SIZES)}); pass image_size=(H, W)")
            columns = {"test_acc": metrics["test_accuracy"], "weights_row": metrics.pop("weights_row")}
            columns.update(metrics)
            yield ModelEntry(model.state_dict(), BUILDER, model.builder_kwargs(),
                             [1, model.in_channels, *size], columns)

    return write_model_folder(out, entries(), overwrite=overwrite)
