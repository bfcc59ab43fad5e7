"""SIREN implicit neural representations as DWSNets and NFN store them.

An INR maps a coordinate to a value: ``x -> W_L(... sin(w0 * (W_1 x + b_1)) ...) + b_L``.
Two public checkpoint conventions are read, one state dict per file:

- **DWSNets** (``nn/inr.py``: ``INR``): keys ``seq.{i}.weight`` ``[out, in]`` and
  ``seq.{i}.bias``; every layer but the last is ``sin(w0 * linear(x))`` with ``w0 = 30``
  (first and hidden layers alike), the last is a plain linear layer, and the network adds
  **0.5** to its output (``seq(x) + 0.5``). MNIST INRs: 2 -> 32 -> 32 -> 1. File tree
  ``mnist_png_<split>_<label>_<n>/.../*.pth`` (see :func:`dwsnets_label`).
- **NFN** (the original SIREN of Sitzmann et al., NFN's ``siren_utils.py``): sine layers keep
  their linear layer in a ``linear`` attribute, so keys are ``net.{i}.linear.weight`` /
  ``.bias``; with ``outermost_linear=True`` the last layer is a plain ``net.{L-1}.weight`` /
  ``.bias``. ``first_omega_0 = hidden_omega_0 = 30``, no output offset. File tree
  ``<prefix>_<label>s/net<index>.pth`` (see :func:`nfn_label`). That NFN's files are saved from
  this class's ``state_dict()`` is inferred from its loaders (which rely only on key order) and
  from other users of the same SIREN class: unverified against the files themselves.

The two INR variants are not interchangeable (different init, output offset, sizes); the
offset is not in the file, so it is set from the key convention and can be overridden.

Checkpoints are pickles, so ``.pth`` / ``.pt`` files are read **only** with
``torch.load(path, weights_only=True)``: PyTorch's restricted unpickler, which builds tensors
and plain containers and refuses any other object (no code runs). ``.safetensors`` files are
read with ``safetensors.torch.load_file``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import torch
from torch import nn

from ..paths import confined_path
from ..model_folder import RESERVED_COLUMNS, ModelEntry, write_model_folder

BUILDER = "gmn_models.public_zoos:Siren"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
KEY_STYLES = ("dwsnets", "nfn")
# per key style: first_w0, hidden_w0, output_offset
_DEFAULTS = {"dwsnets": (30.0, 30.0, 0.5), "nfn": (30.0, 30.0, 0.0)}
_DWS_KEY = re.compile(r"^seq\.(\d+)\.(weight|bias)$")
_NFN_KEY = re.compile(r"^net\.(\d+)\.(linear\.)?(weight|bias)$")


class _SineLayer(nn.Module):
    """Holds the linear map of one NFN/SIREN sine layer (keys ``net.{i}.linear.*``)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear


class Siren(nn.Module):
    """A SIREN MLP whose state dict keys match a DWSNets or NFN checkpoint.

    ``widths``: ``[in, hidden..., out]``, one linear layer per consecutive pair. Layer ``i``
    computes ``h = linear_i(h)``, then ``h = sin(w * h)`` with ``w = first_w0`` for layer 0 and
    ``hidden_w0`` after, on every layer but the last, and on the last too if ``final_sine``.
    The output is ``h + output_offset``. ``key_style="dwsnets"`` names the layers
    ``seq.{i}.weight``; ``"nfn"`` names sine layers ``net.{i}.linear.weight`` and a final plain
    layer ``net.{L-1}.weight``. ``bias=False`` drops every bias. Input ``[..., widths[0]]``;
    returns only the output tensor (NFN's SIREN also returns its coordinates).
    """

    def __init__(self, widths: Sequence[int], *, first_w0: float = 30.0, hidden_w0: float = 30.0,
                 final_sine: bool = False, output_offset: float = 0.0, bias: bool = True,
                 key_style: str = "dwsnets") -> None:
        super().__init__()
        if key_style not in KEY_STYLES:
            raise ValueError(f"Siren: unknown key_style {key_style!r}; known: {list(KEY_STYLES)}")
        if len(widths) < 2 or any(int(w) < 1 for w in widths):
            raise ValueError(f"Siren: widths {list(widths)} must list at least an input and an output width")
        self.widths = [int(w) for w in widths]
        self.first_w0, self.hidden_w0 = float(first_w0), float(hidden_w0)
        self.final_sine, self.output_offset = bool(final_sine), float(output_offset)
        self.bias, self.key_style = bool(bias), key_style
        n = len(self.widths) - 1
        linears = [nn.Linear(self.widths[i], self.widths[i + 1], bias=self.bias) for i in range(n)]
        if key_style == "dwsnets":
            self.seq = nn.Sequential(*linears)
        else:
            self.net = nn.Sequential(*(_SineLayer(lin) if i < n - 1 or self.final_sine else lin
                                       for i, lin in enumerate(linears)))

    def linears(self) -> list[nn.Linear]:
        """The linear layers in order, whatever the key style."""
        layers = self.seq if self.key_style == "dwsnets" else self.net
        return [layer.linear if isinstance(layer, _SineLayer) else layer for layer in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linears = self.linears()
        for i, linear in enumerate(linears):
            x = linear(x)
            if i < len(linears) - 1 or self.final_sine:
                x = torch.sin((self.first_w0 if i == 0 else self.hidden_w0) * x)
        if self.output_offset != 0.0:
            x = x + self.output_offset
        return x

    def builder_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this architecture (JSON-serialisable)."""
        return {"widths": list(self.widths), "first_w0": self.first_w0, "hidden_w0": self.hidden_w0,
                "final_sine": self.final_sine, "output_offset": self.output_offset,
                "bias": self.bias, "key_style": self.key_style}


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth``/``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors`` file.

    ``ValueError`` if the file is missing, has another suffix, is refused by the restricted
    unpickler (it holds objects other than tensors and plain containers), or is not a flat
    mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if path.suffix not in (".pth", ".pt"):
        raise ValueError(f"{path}: unknown checkpoint suffix; expected one of {list(CHECKPOINT_SUFFIXES)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError when refused; others for damaged files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: refused by torch.load(weights_only=True), which only reads tensors "
                         f"and plain containers ({first}); re-save it as a plain state dict") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (names -> tensors), got {type(state).__name__}; "
                         "if it wraps one (e.g. under 'state_dict'), save that inner dict")
    return dict(state)


def siren_from_state_dict(state: Mapping[str, torch.Tensor], *, first_w0: float | None = None,
                          hidden_w0: float | None = None, output_offset: float | None = None,
                          final_sine: bool | None = None, where: str = "state dict") -> Siren:
    """Build the :class:`Siren` a DWSNets- or NFN-style state dict describes and load it.

    The key style is recognised from the keys; widths come from the weight shapes. Arguments
    left ``None`` take the convention's values (DWSNets: w0 30/30, output offset 0.5, plain
    last layer; NFN: w0 30/30, offset 0, last layer as the keys say). ``ValueError`` (naming
    ``where``) for unexpected keys, missing or extra layers, non-chaining shapes, or mixed
    dtypes. The module is in eval mode, in the tensors' dtype, holding the exact values.
    """
    keys = list(state)
    style = "nfn" if keys and keys[0].startswith("net.") else "dwsnets"
    pattern = _NFN_KEY if style == "nfn" else _DWS_KEY
    unexpected = [k for k in keys if not pattern.match(k)]
    if unexpected or not keys:
        expected = ("net.{i}.linear.weight/bias and a final net.{i}.weight/bias (NFN)" if style == "nfn"
                    else "seq.{i}.weight/bias (DWSNets)")
        raise ValueError(f"{where}: unexpected key(s) {unexpected[:5] or '(none: empty)'} for a SIREN "
                         f"checkpoint; expected {expected}")
    layers: dict[int, dict[str, torch.Tensor]] = {}
    sine_keys: dict[int, bool] = {}
    for key in keys:
        match = pattern.match(key)
        index, kind = int(match[1]), match.groups()[-1]
        layers.setdefault(index, {})[kind] = state[key]
        sine = style == "nfn" and match[2] is not None
        if sine_keys.setdefault(index, sine) != sine:
            raise ValueError(f"{where}: layer {index} mixes net.{index}.* and net.{index}.linear.* keys")
    n = len(layers)
    if sorted(layers) != list(range(n)) or any("weight" not in layer for layer in layers.values()):
        raise ValueError(f"{where}: layers {sorted(layers)} must be numbered 0..{n - 1}, each with a weight")
    if style == "nfn":
        plain = [i for i in range(n - 1) if not sine_keys[i]]
        if plain:
            raise ValueError(f"{where}: net.{plain[0]}.weight is a plain linear layer, but only the last "
                             "layer of an NFN SIREN may be (the others are net.{i}.linear.*)")
        if final_sine is not None and final_sine != sine_keys[n - 1]:
            raise ValueError(f"{where}: final_sine={final_sine} contradicts the keys of layer {n - 1}")
        final_sine = sine_keys[n - 1]
    has_bias = {"bias" in layer for layer in layers.values()}
    if len(has_bias) != 1:
        raise ValueError(f"{where}: some layers have a bias and some do not")
    widths = []
    for i in range(n):
        weight, bias = layers[i]["weight"], layers[i].get("bias")
        if weight.dim() != 2 or (widths and weight.shape[1] != widths[-1]) or (
                bias is not None and tuple(bias.shape) != (weight.shape[0],)):
            raise ValueError(f"{where}: layer {i} has weight {list(weight.shape)} and bias "
                             f"{None if bias is None else list(bias.shape)}; expected [out, "
                             f"{widths[-1] if widths else 'in'}] and [out]")
        widths = widths or [weight.shape[1]]
        widths.append(weight.shape[0])
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ValueError(f"{where}: tensors must share one floating dtype, got {sorted(map(str, dtypes))}")
    d_first, d_hidden, d_offset = _DEFAULTS[style]
    model = Siren(widths, first_w0=d_first if first_w0 is None else first_w0,
                  hidden_w0=d_hidden if hidden_w0 is None else hidden_w0,
                  final_sine=bool(final_sine), output_offset=d_offset if output_offset is None else output_offset,
                  bias=has_bias.pop(), key_style=style).to(dtypes.pop())
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_siren_checkpoint(path: str | os.PathLike, *, first_w0: float | None = None,
                          hidden_w0: float | None = None, output_offset: float | None = None,
                          final_sine: bool | None = None) -> Siren:
    """Load one DWSNets/NFN SIREN checkpoint (``.pth``, ``.pt`` or ``.safetensors``).

    Pickled files are read only with ``torch.load(weights_only=True)`` (see
    :func:`read_checkpoint`); the architecture is inferred as in :func:`siren_from_state_dict`,
    whose keyword arguments override the convention's frequencies, offset and last layer.
    """
    return siren_from_state_dict(read_checkpoint(path), first_w0=first_w0, hidden_w0=hidden_w0,
                                 output_offset=output_offset, final_sine=final_sine, where=str(path))


LabelFn = Callable[[PurePosixPath], Any]


def dwsnets_label(path: PurePath) -> dict[str, Any]:
    """``{"label", "split"}`` of a DWSNets INR from its path relative to the data folder.

    DWSNets' split script reads the label as the second-to-last ``_`` field of the checkpoint's
    grandparent folder (``mnist_png_training_7_123/checkpoints/model.pth`` -> 7) and calls a
    file ``train`` if its path contains "train", else ``test``.
    """
    parts = PurePosixPath(path).parts
    fields = parts[-3].split("_") if len(parts) >= 3 else []
    if len(fields) < 2 or not fields[-2].isdigit():
        raise ValueError(f"{path}: no DWSNets label; expected <name>_<label>_<n>/<folder>/<file>")
    return {"label": int(fields[-2]), "split": "train" if "train" in PurePosixPath(path).as_posix() else "test"}


def nfn_label(path: PurePath) -> dict[str, Any]:
    """``{"label", "index"}`` of an NFN SIREN from its path: ``<prefix>_<label>s/net<index>.pth``.

    NFN's loader takes the label from ``_<digit>s`` in the path and the index from
    ``net<index>``; its splits are index ranges (MNIST: 45k / 5k / 10k).
    """
    path = PurePosixPath(path)
    label = re.search(r"_(\d)s(?:/|$)", path.parent.as_posix() + "/")
    index = re.fullmatch(r"net(\d+)", path.stem)
    if label is None or index is None:
        raise ValueError(f"{path}: no NFN label; expected <prefix>_<label>s/net<index>.pth")
    return {"label": int(label[1]), "index": int(index[1])}


def find_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Every ``.pth``/``.pt``/``.safetensors`` file under ``folder``, sorted by relative path.

    ``ValueError`` (:class:`~gmn_models.paths.ModelFolderError`) if one is a symbolic link
    (or lies under one) that points outside ``folder``: nothing outside it is read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder; pass the folder that holds the INR checkpoints")
    found = sorted(p for p in folder.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    if not found:
        raise ValueError(f"{folder}: no {'/'.join(CHECKPOINT_SUFFIXES)} checkpoints found under it")
    for path in found:
        confined_path(folder, path.relative_to(folder), "checkpoint", kind="checkpoint folder",
                      rule="checkpoints must live inside it (remove the link or copy the file in)")
    return found


def siren_folder_to_model_folder(folder: str | os.PathLike, out: str | os.PathLike,
                                 label_fn: LabelFn | None = None, *, limit: int | None = None,
                                 first_w0: float | None = None, hidden_w0: float | None = None,
                                 output_offset: float | None = None, final_sine: bool | None = None,
                                 overwrite: bool = False) -> Path:
    """Convert every SIREN checkpoint under ``folder`` into a model folder at ``out``.

    Checkpoints are found recursively (:func:`find_checkpoints`, sorted) and loaded with
    :func:`load_siren_checkpoint` (same overrides). Columns after the reserved four:
    ``source`` (the checkpoint's path relative to ``folder``), then the labels:
    ``label_fn(relative_path)`` returns a mapping of columns, a scalar (column ``label``) or
    ``None`` (no label). :func:`dwsnets_label` and :func:`nfn_label` read the two public file
    trees. ``input_shape`` is ``[1, in_features]``. Returns the path of ``models.csv``.
    """
    root = Path(folder)
    paths = find_checkpoints(root)[:limit]

    def entries() -> Iterator[ModelEntry]:
        for path in paths:
            relative = PurePosixPath(path.relative_to(root).as_posix())
            model = load_siren_checkpoint(path, first_w0=first_w0, hidden_w0=hidden_w0,
                                          output_offset=output_offset, final_sine=final_sine)
            columns: dict[str, Any] = {"source": str(relative)}
            labels = None if label_fn is None else label_fn(relative)
            if isinstance(labels, Mapping):
                if "source" in labels or set(labels) & set(RESERVED_COLUMNS):
                    raise ValueError(f"label_fn({relative}) returned reserved column(s) "
                                     f"{sorted(set(labels) & {'source', *RESERVED_COLUMNS})}")
                columns.update(labels)
            elif labels is not None:
                columns["label"] = labels
            yield ModelEntry(model.state_dict(), BUILDER, model.builder_kwargs(),
                             [1, model.widths[0]], columns)

    return write_model_folder(out, entries(), overwrite=overwrite)
