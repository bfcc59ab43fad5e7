"""The settings of a ``gmn-train`` run (:class:`TrainConfig`), checked before anything is
written, and the rule for the output folder a run may write into.

Contracts:

* :meth:`TrainConfig.from_dict` and :meth:`TrainConfig.validate` touch no files and raise
  :class:`ConfigError` whose message is one line naming the key, its value and what was
  expected (``config key 'epochs' = -1 (int): expected an integer >= 1``).
* :func:`check_inputs` reads what the config points at (the model folder's ``models.csv``,
  its label columns, the model callable) and raises before the run writes anything.
* :func:`check_out` reads, and :func:`prepare_out` writes, the output folder. A folder is a
  run of ours when it holds :data:`RUN_MARKER` (written first by every run) or, for runs made
  before the marker existed, ``checkpoint.pt``. A run starts in a missing or empty folder;
  one of ours needs ``resume`` (continue) or ``overwrite`` (start over); any other non-empty
  folder needs ``overwrite`` (files named like the run's outputs are then replaced).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from gmn_compiler.fileio import write_atomically

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ConfigError", "TrainConfig", "RUN_MARKER", "OUTPUT_NAMES", "check_inputs", "check_out",
           "prepare_out", "is_run_folder", "model_factory", "first_line"]

RUN_MARKER = "gmn-run.json"
_MARKER_FORMAT = "gmn-train-run-v1"
# every file a run writes into its folder besides the marker (and the default cache/ folder)
OUTPUT_NAMES = ("checkpoint.pt", "best.pt", "metrics.json", "log.csv", "config.json", "splits.json",
                "learning_curves.png", "predictions.png")


class ConfigError(ValueError):
    """A training configuration (or what it points at) is invalid; the message is one line."""


@dataclass
class TrainConfig:
    """Everything a training run depends on. Paths may be relative to the working directory
    (:func:`gmn_models.train_cli.load_config` resolves those of a config file against the
    file's folder). Path-like paths become strings, a single label column a list and tuples
    lists; :meth:`validate` checks the rest."""

    dataset: str  # model folder (models.csv)
    out: str = "gmn-run"  # output directory
    label_columns: list[str] = field(default_factory=lambda: ["test_acc"])
    cache_dir: str | None = None  # compiled dataset cache; default <out>/cache
    on_disk: bool = False  # OnDiskModelGraphDataset (SQLite) instead of in-memory
    compile_workers: int = 2
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train, val, test
    split_seed: int = 0
    model: str = "gmn_models.model:GMN"  # "module:callable" taking the keywords below
    hidden: int = 64
    num_blocks: int = 4
    dropout: float = 0.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra keywords of `model`
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    batch_size: int = 32
    epochs: int = 100
    patience: int = 10  # early stopping: epochs without a better validation loss
    seed: int = 0
    normalize_targets: bool = True  # standardise labels with the training split's mean/std
    resume: bool = False  # continue the run in <out> (from checkpoint.pt when it exists)
    overwrite: bool = False  # start over in an <out> that holds a run, or write into a non-empty one
    progress: bool | None = None  # tqdm bars; default: when stderr is a terminal

    def __post_init__(self) -> None:
        for name in ("dataset", "out", "cache_dir"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.label_columns, str):
            self.label_columns = [self.label_columns]
        for name in ("label_columns", "split"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build and validate a config from a mapping of settings; an unknown key, a missing
        ``dataset`` or a bad value is a :class:`ConfigError`."""
        if not isinstance(values, dict):
            raise ConfigError(f"the config must be a table of settings, got a {type(values).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in values if k not in names)
        if unknown:
            hint = difflib.get_close_matches(unknown[0], names, n=1)
            raise ConfigError(f"unknown config key(s) {unknown}"
                              f"{f' (did you mean {hint[0]!r}?)' if hint else ''}; known keys: {names}")
        if "dataset" not in values:
            raise ConfigError("the config needs 'dataset', the model folder to train on")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting (in field order)."""
        for name, (expected, ok) in _RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise ConfigError(f"config key {name!r} = {_show(value)}: expected {expected}")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other: continue the run in out "
                              "(resume) or start it over (overwrite)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ value rules
def _show(value: Any, limit: int = 80) -> str:
    """``repr`` (one line: strings escape their newlines) cut to ``limit``, and the type."""
    text = repr(value)
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{text} ({type(value).__name__})"


def _is_int(value: Any, low: int, high: float = math.inf) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def _is_number(value: Any, low: float = 0.0, high: float = math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value < high)


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != "" and "\0" not in value


def _is_split(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 3 and all(_is_number(f) for f in value)
            and abs(sum(value) - 1) <= 1e-6 and value[1] > 0)


def _is_model(value: Any) -> bool:
    module, sep, name = value.partition(":") if isinstance(value, str) else ("", "", "")
    return bool(sep and module.strip() and name.strip())


_SEED = "an integer in [0, 2**63)"
_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "dataset": ("a folder path (a non-empty string)", _is_path),
    "out": ("a folder path (a non-empty string)", _is_path),
    "label_columns": ("a column name or a non-empty list of column names",
                      lambda v: isinstance(v, list) and bool(v) and all(isinstance(c, str) and c for c in v)),
    "cache_dir": ("a folder path or null", lambda v: v is None or _is_path(v)),
    "on_disk": ("true or false", lambda v: isinstance(v, bool)),
    "compile_workers": ("an integer >= 0", lambda v: _is_int(v, 0)),
    "split": ("three fractions >= 0 (train, val, test) summing to 1 with val > 0", _is_split),
    "split_seed": (_SEED, lambda v: _is_int(v, 0, 2 ** 63)),
    "model": ("'module:callable' (a string)", _is_model),
    "hidden": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "num_blocks": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "dropout": ("a number in [0, 1)", lambda v: _is_number(v, 0.0, 1.0)),
    "model_kwargs": ("a table of keyword arguments", lambda v: isinstance(v, dict)
                     and all(isinstance(k, str) and k.isidentifier() for k in v)),
    "lr": ("a finite number >= 0", _is_number),
    "weight_decay": ("a finite number >= 0", _is_number),
    "grad_clip": ("a finite number >= 0 (0 disables)", _is_number),
    "batch_size": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "epochs": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "patience": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "seed": (_SEED, lambda v: _is_int(v, 0, 2 ** 63)),
    "normalize_targets": ("true or false", lambda v: isinstance(v, bool)),
    "resume": ("true or false", lambda v: isinstance(v, bool)),
    "overwrite": ("true or false", lambda v: isinstance(v, bool)),
    "progress": ("true, false or null", lambda v: v is None or isinstance(v, bool)),
}


# ------------------------------------------------------------------ what the config points at
def model_factory(cfg: TrainConfig) -> Callable[..., "nn.Module"]:
    """The callable ``cfg.model`` names; :class:`ConfigError` when it cannot be imported."""
    import importlib

    module, _, name = cfg.model.partition(":")
    try:
        factory = getattr(importlib.import_module(module.strip()), name.strip())
    except Exception as exc:  # ImportError, AttributeError, or whatever the module raised
        raise ConfigError(f"model {cfg.model!r} cannot be imported ({first_line(exc)})") from None
    if not callable(factory):
        raise ConfigError(f"model {cfg.model!r} is a {type(factory).__name__}, not a callable")
    return factory


def check_inputs(cfg: TrainConfig) -> None:
    """What the config points at, before any file is written: the model folder (its
    ``models.csv`` and label columns) and the model callable. Raises :class:`ConfigError` or
    :class:`~gmn_models.datasets.ModelFolderError`."""
    from .datasets import read_model_table

    if not os.path.isdir(cfg.dataset):
        raise ConfigError(f"dataset {cfg.dataset!r}: no such folder (the model folder holding models.csv)")
    known = list(read_model_table(cfg.dataset)[0].columns)
    for name in cfg.label_columns:
        if name not in known:
            raise ConfigError(f"label column {name!r} is not in {os.path.join(cfg.dataset, 'models.csv')}; "
                              f"label/metadata columns: {known}")
    model_factory(cfg)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message (its type name when empty), cut to ``limit``."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------ the output folder
def _has_marker(out: Path) -> bool:
    marker = out / RUN_MARKER
    try:
        if not marker.is_file() or marker.stat().st_size > 4096:
            return False
        return json.loads(marker.read_text(encoding="utf-8")).get("format") == _MARKER_FORMAT
    except (ValueError, AttributeError, OSError):
        return False


def is_run_folder(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a run of ours: our :data:`RUN_MARKER`, or ``checkpoint.pt`` (runs
    made before the marker existed)."""
    return _has_marker(Path(out)) or (Path(out) / "checkpoint.pt").is_file()


def check_out(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` unless a run as ``cfg`` says may write into ``cfg.out`` (see
    the module doc); reads only."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {cfg.out!r} is a file, not a folder; choose another --out")
    if not out.is_dir() or next(os.scandir(out), None) is None or cfg.overwrite:
        return
    if is_run_folder(out):
        if not cfg.resume:
            raise ConfigError(f"{out} already holds a training run; continue it with --resume "
                              "(resume = true) or start it over with --overwrite (overwrite = true)")
        return
    raise ConfigError(f"{out} is not empty and holds no gmn-train run (no {RUN_MARKER}): choose a new "
                      "or empty --out, or pass --overwrite (overwrite = true) to write into it anyway, "
                      "replacing files named like the run's outputs")


def prepare_out(cfg: TrainConfig) -> Path:
    """:func:`check_out`, then create ``cfg.out``, remove a previous run's outputs when
    ``overwrite`` and write :data:`RUN_MARKER`; returns the folder."""
    check_out(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite:
        for name in OUTPUT_NAMES:
            (out / name).unlink(missing_ok=True)
    if not _has_marker(out):
        text = json.dumps({"format": _MARKER_FORMAT, "written_by": "gmn-train"}) + "\n"
        write_atomically(out / RUN_MARKER, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out
