"""The ``gmn`` method of :mod:`gmn_models.zoo.experiment`: a graph metanetwork trained on the
experiment's own train rows, predicting its test rows.

The zoo folder is compiled once into parameter graphs with
``gmn_models.datasets.ModelGraphDataset`` (cached under ``<zoo>/.cache/gmn``; not part of the
manifest), rows are matched to graphs by their ``path``, 10 % of the training rows (seeded) are
held out to pick the best epoch, and ``gmn_models.model.GMN`` is trained with AdamW and a cosine
learning-rate schedule on the MSE of standardised targets. This is a deliberately small loop:
``gmn_models.training.train`` draws its own random splits, whereas an experiment split (10 %,
OOD) must be given from outside.

The hyperparameters are a :class:`GMNConfig`; the experiment CLI sets its fields with
``--gmn key=value`` (for example ``--gmn hidden=32 --gmn epochs=20``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Sequence, TextIO

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class GMNConfig:
    """Hyperparameters of the ``gmn`` method. Training runs ``epochs`` epochs, or more when
    that is fewer than ``min_steps`` optimiser steps (so that a small training set, the 10 %
    split, is not trained for only a few dozen steps). ``value_transform`` is passed to
    :class:`gmn_models.model.GMN` (``"symlog"`` bounds the growth of batch-norm running
    variances and similar large values; ``"raw"`` feeds the value as it is). ``graph_stats``
    (default on since issue 14: +0.06 R² at 10 % on seed 0) adds the fixed per-graph statistics
    of :class:`gmn_models.encoders.GraphStatistics` to the readout; ``stats_counts=False`` drops
    their counts (which grow with width). ``aux_recipe > 0`` also
    trains five more graph outputs on the training networks' standardised recipe
    (:func:`gmn_models.zoo.baselines.recipe_features`), weighted by ``aux_recipe`` in the loss
    (multi-task; only the weights are read at test time). ``ema > 0`` evaluates (validation and
    test) an exponential moving average of the weights with that decay per step. Neither of the
    last two helped (docs/results.md, ablation); both stay off by default.

    ``pretrain_steps > 0`` (semi-supervised): before the accuracy fit, the GMN is trained for
    that many steps to predict the standardised recipe of every training network *and* every
    unlabelled one the experiment passes (at 10 %: the other 90 % of the training pool, whose
    accuracies are withheld; :func:`gmn_models.zoo.experiment.unlabeled_rows`). The recipe is
    metadata every network of the zoo carries; no accuracy of an unlabelled network is read.

    ``ensemble``: members separated by ``|``, each a comma-separated list of ``key=value``
    changes to this config (``"graph_stats=1|graph_stats=0"``); every member is trained on the
    same split with the same seed and the predictions are averaged (empty: one model)."""

    hidden: int = 32
    num_blocks: int = 3
    epochs: int = 50
    min_steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dropout: float = 0.0
    value_transform: str = "symlog"
    graph_stats: bool = True
    stats_counts: bool = True
    aux_recipe: float = 0.0
    ema: float = 0.0
    pretrain_steps: int = 0
    ensemble: str = ""

    def __post_init__(self) -> None:
        from gmn_models.encoders import VALUE_TRANSFORMS

        if self.value_transform not in VALUE_TRANSFORMS:
            raise ValueError(f"--gmn value_transform={self.value_transform}: expected one of {VALUE_TRANSFORMS}")
        small = [f"{k}={getattr(self, k)}" for k in ("hidden", "epochs", "batch_size") if getattr(self, k) < 1]
        small += [f"{k}={getattr(self, k)}" for k in ("num_blocks", "min_steps", "pretrain_steps")
                  if getattr(self, k) < 0]
        small += [f"lr={self.lr}"] if not self.lr > 0 else []
        small += [f"aux_recipe={self.aux_recipe}"] if self.aux_recipe < 0 else []
        small += [f"ema={self.ema}"] if not 0 <= self.ema < 1 else []
        if small:
            raise ValueError(f"--gmn {', '.join(small)}: out of range (hidden, epochs, batch_size >= 1; "
                             "num_blocks, min_steps, pretrain_steps, aux_recipe >= 0; lr > 0; 0 <= ema < 1)")
        self.members()  # a malformed ensemble is refused when the config is made

    def members(self) -> list["GMNConfig"]:
        """The configs whose predictions are averaged: this one alone, or one per ``ensemble``
        member (this config with the member's changes; members cannot nest)."""
        if not self.ensemble:
            return [self]
        base = dataclasses.replace(self, ensemble="")
        found = []
        for spec in self.ensemble.split("|"):
            changes = [item for item in spec.split(",") if item.strip()]
            if any(item.strip().startswith("ensemble") for item in changes):
                raise ValueError(f"--gmn ensemble={self.ensemble!r}: members cannot nest an ensemble")
            found.append(base.replace(changes))
        return found

    def replace(self, assignments: Sequence[str]) -> "GMNConfig":
        """A copy with ``key=value`` assignments applied (values parsed with the field's type);
        an unknown key or a malformed assignment raises ``ValueError`` naming it."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes = {}
        for item in assignments:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                raise ValueError(f"--gmn {item!r}: expected key=value with key one of {sorted(fields)}")
            kind = type(getattr(self, key))
            try:
                changes[key] = _parse_bool(value) if kind is bool else kind(value)
            except ValueError:
                raise ValueError(f"--gmn {item!r}: {value!r} is not a valid {kind.__name__}") from None
        return dataclasses.replace(self, **changes)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


def zoo_graphs(root: str | os.PathLike, target: str = "test_acc"):
    """The zoo folder ``root`` compiled into parameter graphs (a
    ``gmn_models.datasets.ModelGraphDataset`` with ``target`` as label), built on first use
    and cached on disk under ``<root>/.cache/gmn`` and in memory for this process (one entry
    per folder, however its path is spelled)."""
    return _zoo_graphs(os.path.realpath(root), target)


@functools.lru_cache(maxsize=4)
def _zoo_graphs(root: str, target: str):
    from gmn_models.datasets import ModelGraphDataset

    return ModelGraphDataset(os.path.join(root, ".cache", "gmn"), root, [target], workers=0, progress=False)


def gmn_predict(train_rows: Sequence[dict], test_rows: Sequence[dict], seed: int, target: str = "test_acc",
                config: GMNConfig = GMNConfig(), log: TextIO | None = None,
                unlabeled: Sequence[dict] = ()) -> np.ndarray:
    """Predictions of ``target`` for ``test_rows`` (all rows from one zoo folder): the mean over
    the config's :meth:`~GMNConfig.members` (one model unless ``ensemble`` is set); with
    ``log``, one line per epoch (train loss, validation MSE, seconds). ``unlabeled`` rows (same
    folder, disjoint from both) are read only by recipe pre-training (``pretrain_steps``), and
    only for their weights and recipe."""
    members = config.members()
    predictions = []
    for k, member in enumerate(members):
        if log and len(members) > 1:
            print(f"  gmn ensemble member {k + 1}/{len(members)}", file=log, flush=True)
        predictions.append(_predict_one(train_rows, test_rows, unlabeled, seed, target, member, log))
    return np.mean(predictions, axis=0)


def _predict_one(train_rows: Sequence[dict], test_rows: Sequence[dict], unlabeled: Sequence[dict], seed: int,
                 target: str, config: GMNConfig, log: TextIO | None) -> np.ndarray:
    """One model's predictions (see :func:`gmn_predict`)."""
    from torch_geometric.loader import DataLoader

    from gmn_models.model import GMN

    from .baselines import RECIPE

    ds = zoo_graphs(train_rows[0]["root"], target)
    position = {ds.metadata[mid]["path"]: i for i, mid in enumerate(ds.model_ids)}
    missing = [r["path"] for r in [*train_rows, *test_rows, *unlabeled] if r["path"] not in position]
    if missing:
        raise ValueError(f"GMN method: {len(missing)} rows did not compile, e.g. {missing[0]} "
                         f"(dataset failures: {ds.failures[:1]})")
    order = np.random.default_rng(seed).permutation(len(train_rows))
    n_val = max(1, len(train_rows) // 10)
    val = [position[train_rows[i]["path"]] for i in order[:n_val]]
    fit_rows = [train_rows[i] for i in order[n_val:]]
    test = [position[r["path"]] for r in test_rows]
    y = torch.tensor([r[target] for r in fit_rows], dtype=torch.float32)
    mu, sd = y.mean(), y.std().clamp_min(1e-6)
    # one target row per graph: the standardised label, then (multi-task) the standardised recipe
    targets = ((y - mu) / sd).unsqueeze(1)
    if config.aux_recipe > 0:
        targets = torch.cat([targets, _standardised_recipe(fit_rows)], dim=1)
    fit = []
    for row, t in zip(fit_rows, targets):
        graph = ds[position[row["path"]]]
        graph.target = t.unsqueeze(0)
        fit.append(graph)
    weights = torch.tensor([1.0] + [config.aux_recipe / len(RECIPE)] * (targets.shape[1] - 1))

    torch.manual_seed(seed)
    recipe_head = config.aux_recipe > 0 or config.pretrain_steps > 0
    model = GMN(hidden=config.hidden, num_blocks=config.num_blocks, graph_out=1 + len(RECIPE) * recipe_head,
                dropout=config.dropout, value_transform=config.value_transform, graph_stats=config.graph_stats,
                stats_counts=config.stats_counts)
    if config.pretrain_steps > 0:
        pool = [ds[position[r["path"]]] for r in [*train_rows, *unlabeled]]
        _pretrain_on_recipe(model, pool, [*train_rows, *unlabeled], config, seed, log)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    averaged = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema)) if config.ema > 0 else None)
    scored = averaged.module if averaged is not None else model
    loader = DataLoader(fit, batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    epochs = max(config.epochs, math.ceil(config.min_steps / len(loader)))
    total_steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))

    def predict(positions: list[int]) -> torch.Tensor:
        scored.eval()
        with torch.no_grad():
            out = [scored(b)[:, 0] for b in DataLoader(ds[positions], batch_size=128)]
        return torch.cat(out) * sd + mu

    best, best_state = float("inf"), None
    y_val = torch.tensor([ds[i].y.item() for i in val])
    for epoch in range(epochs):
        start, model_loss, seen = time.perf_counter(), 0.0, 0
        model.train()
        for batch in loader:
            loss = ((model(batch)[:, :targets.shape[1]] - batch.target) ** 2).mean(0) @ weights
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if averaged is not None:
                averaged.update_parameters(model)
            model_loss += loss.item() * batch.num_graphs
            seen += batch.num_graphs
        val_loss = float(((predict(val) - y_val) ** 2).mean())
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in scored.state_dict().items()}
        if log:
            print(f"  gmn epoch {epoch + 1}/{epochs} train {model_loss / seen:.4f} (standardised) "
                  f"val MSE {val_loss:.5f} ({time.perf_counter() - start:.1f}s)", file=log, flush=True)
    scored.load_state_dict(best_state)
    return predict(test).numpy()


def _standardised_recipe(rows: Sequence[dict]) -> torch.Tensor:
    """``[len(rows), 5]``: the rows' recipe columns, standardised over these rows."""
    from .baselines import recipe_features

    recipe = torch.tensor([recipe_features(r) for r in rows], dtype=torch.float32)
    return (recipe - recipe.mean(0)) / recipe.std(0).clamp_min(1e-6)


def _pretrain_on_recipe(model, graphs: list, rows: Sequence[dict], config: GMNConfig, seed: int,
                        log: TextIO | None) -> None:
    """Train ``model``'s graph outputs 1.. (output 0 is the accuracy head, untouched by the
    loss) for ``config.pretrain_steps`` steps on the standardised recipe of ``rows`` (one graph
    each), with AdamW and a cosine schedule of their own."""
    from torch_geometric.loader import DataLoader

    for graph, t in zip(graphs, _standardised_recipe(rows)):
        graph.target = t.unsqueeze(0)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.pretrain_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    loader = DataLoader(graphs, batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed + 1))
    model.train()
    done, start, total = 0, time.perf_counter(), 0.0
    while done < steps:
        for batch in loader:
            loss = ((model(batch)[:, 1:] - batch.target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done, total = done + 1, total + loss.item()
            if log and done % 250 == 0:
                print(f"  gmn pretrain step {done}/{steps} recipe MSE {total / 250:.4f} (standardised) "
                      f"({time.perf_counter() - start:.1f}s)", file=log, flush=True)
                total = 0.0
            if done == steps:
                break
