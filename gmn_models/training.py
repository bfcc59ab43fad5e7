"""Train a graph metanetwork to predict a property of models (e.g. test accuracy) from their
compiled parameter graphs.

``train(TrainConfig(dataset="zoo/", out="runs/a"))`` compiles the model folder (cached), splits
it, trains with AdamW on the MSE of standardised targets, keeps the best validation weights,
stops after ``patience`` epochs without improvement, and writes to ``out``: ``checkpoint.pt``
(model, optimizer, epoch, RNG state, best weights, history; every epoch), ``best.pt`` (best
weights, target normalisation, config), ``log.csv`` (epoch, train_loss, val_loss, val_r2,
val_kendall_tau, time_s; losses are MSEs of standardised targets), ``learning_curves.png``,
``predictions.png`` (test split, else validation), ``metrics.json`` (MSE in label units, R²,
Kendall tau), ``config.json`` and ``splits.json``. Every ``.pt`` holds plain tensors and
numbers and loads with ``torch.load(..., weights_only=True)``.

The run writes ``gmn-run.json`` first; ``out`` must be new or empty, or hold a previous run
and ``resume`` or ``overwrite`` be set, or ``overwrite`` be set for any other folder (see
:mod:`gmn_models.train_config`, which also holds :class:`TrainConfig` and its checks: a bad
setting, model folder, label column or model is a :class:`ConfigError` before anything is
written). A checkpoint that is truncated, corrupt, not ours or holds anything but tensors and
plain data (``weights_only=True`` refuses it) is a one-line :class:`ConfigError` too.

``resume=True`` continues from ``checkpoint.pt`` and ends with the same weights and log as an
uninterrupted run: each epoch reseeds from ``(seed, epoch, rank)`` and shuffles with
``DistributedSampler(seed).set_epoch``. Under ``torchrun`` (``WORLD_SIZE > 1``) training is
data-parallel (DistributedDataParallel, gloo); every rank evaluates the whole validation split,
so early stopping agrees, and rank 0 alone writes files.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import os
import pickle
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Subset
from torch_geometric.loader import DataLoader

from gmn_compiler import schema
from gmn_compiler.fileio import write_atomically

from .metrics import json_safe, kendall_tau, r2_score, regression_metrics
from .plots import plot_learning_curves, plot_predictions
from .train_config import ConfigError, TrainConfig, check_inputs, first_line, model_factory, prepare_out

__all__ = ["TrainConfig", "TrainResult", "ConfigError", "train"]

_CHECKPOINT_FORMAT = "gmn-train-checkpoint-v1"
# fields that may differ between a run and its resumption
_RUNTIME_FIELDS = {"dataset", "out", "cache_dir", "compile_workers", "epochs", "patience", "resume",
                   "overwrite", "progress"}
@dataclass
class TrainResult:
    """``model``: the network with the best validation weights (eval mode); ``metrics``: what
    ``metrics.json`` holds; ``history``: the rows of ``log.csv``."""

    out_dir: Path
    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    metrics: dict[str, Any]


# ------------------------------------------------------------------ distributed helpers
def _init_distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), created


def _rank0_first(fn: Callable[[], Any], rank: int, world: int) -> Any:
    """Run ``fn`` on rank 0, then on the others (rank 0 builds caches the others read)."""
    if world == 1:
        return fn()
    result, failed = None, torch.zeros(1)
    if rank == 0:
        try:
            result = fn()
        except BaseException:
            failed += 1
            dist.broadcast(failed, 0)
            raise
    dist.broadcast(failed, 0)
    if failed.item():
        raise RuntimeError("rank 0 failed while preparing the run (see its error)")
    return result if rank == 0 else fn()


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + rank) % (2 ** 63)


# ------------------------------------------------------------------ data and model
def _dataset(cfg: TrainConfig):
    from .datasets import ModelGraphDataset, OnDiskModelGraphDataset

    cls = OnDiskModelGraphDataset if cfg.on_disk else ModelGraphDataset
    cache = cfg.cache_dir or os.path.join(cfg.out, "cache")
    return cls(cache, cfg.dataset, cfg.label_columns, workers=cfg.compile_workers, progress=cfg.progress)


def _splits(n: int, cfg: TrainConfig) -> dict[str, list[int]]:
    """Dataset positions of the train / val / test splits (seeded permutation)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed)).tolist()
    n_val = max(1, round(cfg.split[1] * n))
    n_test = round(cfg.split[2] * n)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ConfigError(f"{n} compiled models are too few for split {cfg.split}")
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def _labels(dataset, positions: list[int], columns: list[str]) -> torch.Tensor:
    return torch.tensor([[dataset.metadata[dataset.model_ids[i]][c] for c in columns] for i in positions],
                        dtype=torch.float32).reshape(len(positions), len(columns))


def _make_model(cfg: TrainConfig, num_labels: int, vocabulary: schema.Vocabulary) -> nn.Module:
    """The model ``cfg.model`` names; given ``vocabulary`` (the dataset's) when it takes one."""
    factory = model_factory(cfg)
    extra = {"vocabulary": vocabulary} if _accepts(factory, "vocabulary") else {}
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and every run
    try:
        return factory(hidden=cfg.hidden, num_blocks=cfg.num_blocks, graph_out=num_labels, edge_out=0,
                       dropout=cfg.dropout, **extra, **cfg.model_kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {cfg.model!r} rejected its settings ({first_line(exc)})") from None


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: pass only the documented settings
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@dataclass
class _State:
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False


# ------------------------------------------------------------------ one epoch
def _bar(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def _train_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, cfg: TrainConfig,
                 norm: tuple[torch.Tensor, torch.Tensor], world: int, show: bool, epoch: int) -> float:
    net.train()
    mean, std = norm
    total = torch.zeros(2, dtype=torch.float64)  # sum of losses * graphs, graphs
    for batch in _bar(loader, show, f"epoch {epoch}"):
        optimizer.zero_grad(set_to_none=True)
        pred = net(batch)
        loss = nn.functional.mse_loss(pred, (batch.y - mean) / std)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        optimizer.step()
        total += torch.tensor([loss.item() * batch.num_graphs, batch.num_graphs], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1])


@torch.no_grad()
def _predict(model: nn.Module, loader: DataLoader, norm: tuple[torch.Tensor, torch.Tensor]):
    """(predictions, targets) in label units, ``[n, L]`` each."""
    model.eval()
    mean, std = norm
    preds, trues = [], []
    for batch in loader:
        preds.append(model(batch) * std + mean)
        trues.append(batch.y)
    if not preds:
        return torch.zeros(0, mean.numel()), torch.zeros(0, mean.numel())
    return torch.cat(preds), torch.cat(trues)


# ------------------------------------------------------------------ files
def _save_torch(path: Path, payload: dict) -> None:
    write_atomically(path, lambda tmp: torch.save(payload, tmp))


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


_LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_r2", "val_kendall_tau", "time_s")


def _write_log(out: Path, history: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: repr(row[k]) for k in _LOG_COLUMNS} for row in history)
    _write_text(out / "log.csv", buffer.getvalue())


def _checkpoint(out: Path, cfg: TrainConfig, model: nn.Module, optimizer, state: _State, norm) -> None:
    _save_torch(out / "checkpoint.pt", {
        "format": _CHECKPOINT_FORMAT, "epoch": state.epoch, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "history": state.history,
        "best_val": state.best_val, "best_epoch": state.best_epoch, "best_model": state.best_model,
        "bad_epochs": state.bad_epochs, "stopped_early": state.stopped_early,
        "target_mean": norm[0], "target_std": norm[1], "config": cfg.to_dict(),
        "vocabulary": getattr(model, "vocabulary", schema.BUILTIN).to_dict(),
        "schema_version": schema.SCHEMA_VERSION})


_CHECKPOINT_TYPES = {"epoch": int, "model": dict, "optimizer": dict, "rng": torch.Tensor,
                     "history": list, "best_val": float, "best_epoch": int, "best_model": (dict, type(None)),
                     "bad_epochs": int, "stopped_early": bool, "target_mean": torch.Tensor,
                     "target_std": torch.Tensor, "config": dict}


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """``path`` loaded with ``torch.load(weights_only=True)`` (never a full unpickling), its
    entries type-checked; :class:`ConfigError` (one line) for anything else."""
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4" of a file that is not ours
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"{path}: refused by the weights-only loader: not just tensors and plain data "
                          "(a corrupt file, or one holding code or objects); start over with --overwrite "
                          "or use another --out") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or first_line(exc)}); start over with "
                          "--overwrite or use another --out") from None
    except Exception as exc:  # truncated zip, garbage, empty file: RuntimeError, OSError, EOFError, ...
        raise ConfigError(f"{path}: truncated or corrupt checkpoint ({type(exc).__name__}); start over "
                          "with --overwrite or use another --out") from None
    if not isinstance(ck, dict) or ck.get("format") != _CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a gmn-train checkpoint; start over with --overwrite")
    bad = [k for k, kind in _CHECKPOINT_TYPES.items() if not isinstance(ck.get(k), kind)]
    if not bad and not all(isinstance(row, dict) and all(_is_real(row.get(c)) for c in _LOG_COLUMNS)
                           for row in ck["history"]):
        bad = ["history"]
    if bad:
        raise ConfigError(f"{path}: damaged gmn-train checkpoint (bad or missing {bad}); start over "
                          "with --overwrite")
    return ck


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load_states(path: Path, ck: dict[str, Any], model: nn.Module, optimizer, num_labels: int) -> None:
    """Checkpointed weights, optimizer state and RNG state into ``model`` / ``optimizer`` /
    torch; :class:`ConfigError` when they do not fit."""
    try:
        model.load_state_dict(ck["model"])
        if ck["best_model"] is not None:
            shapes = {k: v.shape for k, v in model.state_dict().items()}
            if {k: getattr(v, "shape", None) for k, v in ck["best_model"].items()} != shapes:
                raise ValueError("best_model does not match the model's parameters")
        optimizer.load_state_dict(ck["optimizer"])
        for param, state in optimizer.state.items():
            if any(isinstance(v, torch.Tensor) and v.dim() and v.shape != param.shape
                   for v in state.values()):
                raise ValueError("optimizer state does not match the model's parameters")
        torch.set_rng_state(ck["rng"])
        if ck["target_mean"].shape != (num_labels,) or ck["target_std"].shape != (num_labels,):
            raise ValueError("target normalisation does not match label_columns")
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ConfigError(f"{path} does not fit this model ({first_line(exc)}); start over with "
                          "--overwrite or use another --out") from None


def _restore(out: Path, cfg: TrainConfig, model: nn.Module, optimizer) -> tuple[_State, tuple]:
    path = out / "checkpoint.pt"
    ck = _read_checkpoint(path)
    saved, now = ck["config"], cfg.to_dict()
    changed = sorted(k for k in now if k not in _RUNTIME_FIELDS and saved.get(k) != now[k])
    if changed:
        raise ConfigError(f"cannot resume {out}: the config changed in {changed}; use a new out "
                          "directory or overwrite")
    version = ck.get("schema_version", 1)  # checkpoints before schema v2 did not record it
    if not isinstance(version, int) or not schema.reads_columns_of(version):
        raise ConfigError(f"{path}: trained on schema v{version} graphs, whose columns differ from the "
                          f"v{schema.SCHEMA_VERSION} graphs this gmn-compiler builds; start over with "
                          "--overwrite or use another --out")
    try:
        saved_vocabulary = schema.Vocabulary.from_dict(ck.get("vocabulary", {}))
    except (AttributeError, TypeError, ValueError):
        raise ConfigError(f"{path}: damaged gmn-train checkpoint (bad vocabulary); start over with "
                          "--overwrite") from None
    if saved_vocabulary != getattr(model, "vocabulary", schema.BUILTIN):
        raise ConfigError(f"cannot resume {out}: the graphs' vocabulary changed since the checkpoint "
                          f"(plugin names then {saved_vocabulary.extensions()}, now "
                          f"{getattr(model, 'vocabulary', schema.BUILTIN).extensions()}); load the same "
                          "plugins, or use a new out directory")
    _load_states(path, ck, model, optimizer, len(cfg.label_columns))
    state = _State(ck["epoch"], ck["history"], ck["best_val"], ck["best_epoch"], ck["best_model"],
                   ck["bad_epochs"], ck["stopped_early"])
    return state, (ck["target_mean"], ck["target_std"])


# ------------------------------------------------------------------ the run
def train(config: TrainConfig | dict[str, Any]) -> TrainResult:
    """Train as ``config`` says (see :class:`TrainConfig` and the module doc); return the best
    model and its metrics. Before writing anything, raises :class:`ConfigError` for a bad
    config, a missing model folder or label column, a model that cannot be imported, or an
    ``out`` folder it may not write into (see :mod:`gmn_models.train_config`: a previous run
    needs ``resume`` or ``overwrite``, another non-empty folder ``overwrite``); later, for a
    checkpoint that is unreadable, not ours, or whose config differs in anything but runtime
    settings (epochs, patience, paths, progress). Seeds torch's global RNG (model
    initialisation, then every epoch)."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg.validate()
    check_inputs(cfg)
    rank, world, created = _init_distributed()
    try:
        return _Run(cfg, rank, world).run()
    finally:
        if created:
            dist.destroy_process_group()


def _target_norm(dataset, positions: list[int], cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the training labels, or (0, 1) without normalisation."""
    labels = _labels(dataset, positions, cfg.label_columns)
    if not cfg.normalize_targets:
        return torch.zeros(labels.shape[1]), torch.ones(labels.shape[1])
    return labels.mean(0), labels.std(0, unbiased=False).clamp_min(1e-8)


class _Run:
    """One training run as seen by one rank: data, model, optimizer, loop state."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int):
        self.cfg, self.rank, self.world = cfg, rank, world
        # rank 0 alone checks and prepares the folder (the others would see its marker)
        self.out = _rank0_first(lambda: prepare_out(cfg) if rank == 0 else Path(cfg.out), rank, world)
        self.dataset = _rank0_first(lambda: _dataset(cfg), rank, world)
        self.splits = _splits(len(self.dataset), cfg)
        self.norm = _target_norm(self.dataset, self.splits["train"], cfg)
        self.model = _make_model(cfg, len(cfg.label_columns), self.dataset.vocabulary)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.state = _State()
        if cfg.resume and (self.out / "checkpoint.pt").exists():
            self.state, self.norm = _restore(self.out, cfg, self.model, self.optimizer)
        self.net = nn.parallel.DistributedDataParallel(self.model) if world > 1 else self.model
        subsets = {k: Subset(self.dataset, v) for k, v in self.splits.items()}
        self.sampler = DistributedSampler(subsets["train"], num_replicas=world, rank=rank, shuffle=True,
                                          seed=cfg.seed)
        self.train_loader = DataLoader(subsets["train"], batch_size=cfg.batch_size, sampler=self.sampler)
        self.loaders = {k: DataLoader(subsets[k], batch_size=cfg.batch_size) for k in ("val", "test")}
        self.show = rank == 0 and (sys.stderr.isatty() if cfg.progress is None else cfg.progress)

    def run(self) -> TrainResult:
        if self.rank == 0:
            _write_text(self.out / "config.json", json.dumps(self.cfg.to_dict(), indent=1))
            ids = {k: [self.dataset.model_ids[i] for i in v] for k, v in self.splits.items()}
            _write_text(self.out / "splits.json", json.dumps(ids))
        while self.state.epoch < self.cfg.epochs and not self.state.stopped_early:
            self.epoch(self.state.epoch + 1)
        return self.finish()

    def epoch(self, epoch: int) -> None:
        """Train one epoch, validate, update early stopping, write checkpoint and log."""
        cfg, state, start = self.cfg, self.state, time.perf_counter()
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, self.rank))
        self.sampler.set_epoch(epoch)
        train_loss = _train_epoch(self.net, self.optimizer, self.train_loader, cfg, self.norm, self.world,
                                  self.show, epoch)
        pred, true = _predict(self.model, self.loaders["val"], self.norm)
        mean, std = self.norm
        val_loss = float(nn.functional.mse_loss((pred - mean) / std, (true - mean) / std))
        state.epoch = epoch
        state.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                              "val_r2": r2_score(pred, true), "val_kendall_tau": kendall_tau(pred, true),
                              "time_s": time.perf_counter() - start})
        if val_loss < state.best_val:
            state.best_val, state.best_epoch, state.bad_epochs = val_loss, epoch, 0
            state.best_model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if self.rank == 0:
                _save_torch(self.out / "best.pt", {"epoch": epoch, "model": state.best_model,
                                                   "target_mean": self.norm[0], "target_std": self.norm[1],
                                                   "config": cfg.to_dict(),
                                                   "schema_version": schema.SCHEMA_VERSION})
        else:
            state.bad_epochs += 1
            state.stopped_early = state.bad_epochs >= cfg.patience
        if self.rank == 0:
            _checkpoint(self.out, cfg, self.model, self.optimizer, state, self.norm)
            _write_log(self.out, state.history)

    def finish(self) -> TrainResult:
        """Best weights back in, final metrics on validation and test, plots (rank 0)."""
        state, splits = self.state, self.splits
        if state.best_model is not None:
            self.model.load_state_dict(state.best_model)
        self.model.eval()
        results = {k: _predict(self.model, self.loaders[k], self.norm) for k in ("val", "test")}
        metrics = json_safe({
            "label_columns": list(self.cfg.label_columns), "best_epoch": state.best_epoch,
            "epochs_run": state.epoch, "stopped_early": state.stopped_early,
            "num_models": {k: len(v) for k, v in splits.items()}, "compiled_models": len(self.dataset),
            "val": regression_metrics(*results["val"]),
            "test": regression_metrics(*results["test"]) if splits["test"] else None})
        if self.rank == 0:
            _write_text(self.out / "metrics.json", json.dumps(metrics, indent=1))
            plot_learning_curves(state.history, self.out / "learning_curves.png", state.best_epoch)
            shown = "test" if splits["test"] else "val"
            pred, true = results[shown]
            plot_predictions(true.numpy(), pred.numpy(), self.out / "predictions.png",
                             title=f"{shown} split (best epoch {state.best_epoch})",
                             label=self.cfg.label_columns[0])
        if self.world > 1:
            dist.barrier()
        return TrainResult(self.out, self.model, state.history, state.best_epoch, state.epoch,
                           state.stopped_early, metrics)
