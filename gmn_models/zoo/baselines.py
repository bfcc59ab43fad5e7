"""Non-GMN baselines for predicting a zoo network's test accuracy.

Every baseline is a function ``(train_rows, test_rows, seed, target="test_acc") -> np.ndarray``
(one prediction per test row). Rows come from :func:`gmn_models.zoo.folder.load_rows`; weights
are read with safetensors (never unpickled). All handle mixed architectures:

* :func:`arch_only` — architecture and dataset columns only (family, dataset, width, depth,
  kernel, activation, norm, heads, patch, widen, parameter count): no weights, no training
  hyperparameters; ``HistGradientBoostingRegressor``.
* :func:`hparams` — the same plus the training hyperparameters (lr, epochs, init scale,
  weight decay, label noise). Not a weight-space method: a reference for how much of the label
  the training recipe explains.
* :func:`statnn` — StatNN (Unterthiner et al. 2020): per-tensor statistics (mean, variance,
  quantiles 0/25/50/75/100 %, log size) of the first :data:`STAT_FIRST` and the last
  :data:`STAT_LAST` floating-point tensors in state-dict order (missing positions NaN, which
  the boosted trees handle natively) plus the same statistics over all matrices and all
  vectors; ``HistGradientBoostingRegressor``.
* :func:`statnn_recipe` — semi-supervised StatNN: also reads the split's unlabelled rows
  (weights and recipe, never their accuracy) to learn the recipe from StatNN features, and
  adds the predicted recipe to its features (the reference for the GMN's recipe pre-training).
* :func:`deepsets` — DeepSets over parameters: each scalar an element with features (value,
  embedding of its tensor's index from the start and from the end, embedding of the tensor
  kind), φ MLP → mean per network → ρ MLP, in torch.
* :func:`dmc` — DMC-style (Eilertsen et al. 2020) 1-D CNN over the flattened parameter
  vector, cut or zero-padded to :data:`DMC_LENGTH` (a longer vector keeps its first and last
  halves, so the classifier layer is always seen) with a mask channel.

Tensor kinds (:func:`tensor_kind`): linear weight, conv weight, bias, norm weight, norm
running statistic, other (e.g. a position embedding).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingRegressor
from torch import nn

from .folder import load_state_dict
from .plan import COMBOS

KINDS = ("linear", "conv", "bias", "norm_weight", "norm_stat", "other")
FAMILIES = tuple(sorted({f for f, _ in COMBOS}))
DATASETS = tuple(sorted({d for _, d in COMBOS}))
ACTIVATIONS = ("relu", "gelu", "tanh")
NORMS = ("batch", "group", "none")
STAT_FIRST, STAT_LAST = 6, 4
MAX_LAYER = 32
DMC_LENGTH = 4096

Rows = Sequence[dict]


def tensor_kind(name: str, t: torch.Tensor) -> int:
    """Index in :data:`KINDS` of state-dict entry ``name``."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("running_mean", "running_var"):
        return KINDS.index("norm_stat")
    if leaf == "bias":
        return KINDS.index("bias")
    if leaf == "weight":
        return KINDS.index({1: "norm_weight", 2: "linear"}.get(t.dim(), "conv"))
    return KINDS.index("other")


@functools.lru_cache(maxsize=None)
def flat_parameters(root: str, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All floating-point entries of a stored state dict, flattened in state-dict order:
    (values float32, tensor index int16, tensor count, kind int8). Cached per file."""
    sd = load_state_dict({"root": root, "path": path})
    items = [(k, v) for k, v in sd.items() if v.is_floating_point()]
    values = np.concatenate([v.reshape(-1).float().numpy() for _, v in items])
    index = np.concatenate([np.full(v.numel(), i, np.int16) for i, (_, v) in enumerate(items)])
    kind = np.concatenate([np.full(v.numel(), tensor_kind(k, v), np.int8) for k, v in items])
    return values, index, np.array(len(items)), kind


def _params(row: dict):
    return flat_parameters(row["root"], row["path"])


def _onehot(value, vocab: Sequence) -> list[float]:
    return [float(value == v) for v in vocab]


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def arch_features(row: dict) -> list[float]:
    """Architecture/dataset features of a row (no weights, no training hyperparameters)."""
    return (_onehot(row["family"], FAMILIES) + _onehot(row["dataset"], DATASETS)
            + _onehot(row.get("activation"), ACTIVATIONS) + _onehot(row.get("norm"), NORMS)
            + [_num(row.get(k)) for k in ("width", "depth", "kernel_size", "heads", "patch", "widen")]
            + [math.log(row["n_params"])])


RECIPE = ("log10 lr", "log2 epochs", "log2 init_scale", "log10 (weight_decay + 1e-5)", "label_noise")


def recipe_features(row: dict) -> list[float]:
    """The training hyperparameters of a row, on log scales (named by :data:`RECIPE`)."""
    return [math.log10(row["lr"]), math.log2(row["epochs"]), math.log2(row["init_scale"]),
            math.log10(row["weight_decay"] + 1e-5), float(row["label_noise"])]


def hparam_features(row: dict) -> list[float]:
    """:func:`arch_features` plus :func:`recipe_features`."""
    return arch_features(row) + recipe_features(row)


def _stats(v: np.ndarray) -> list[float]:
    if v.size == 0:
        return [float("nan")] * 8
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return [float(v.mean()), float(v.var()), *map(float, q), math.log(v.size)]


def statnn_features(row: dict) -> list[float]:
    """StatNN features (see module docstring): 8 statistics × (STAT_FIRST + STAT_LAST
    positional tensors + all matrices + all vectors) + log parameter count."""
    values, index, count, kind = _params(row)
    n = int(count)
    tensors = [values[index == i] for i in range(n)]
    nan = [float("nan")] * 8
    first = [_stats(tensors[i]) if i < n else nan for i in range(STAT_FIRST)]
    last = [_stats(tensors[n - 1 - i]) if i < n else nan for i in range(STAT_LAST)]
    matrix = np.isin(kind, [KINDS.index("linear"), KINDS.index("conv")])
    feats = [x for s in first + last for x in s] + _stats(values[matrix]) + _stats(values[~matrix])
    return feats + [math.log(values.size)]


def _matrices(features: Callable[[dict], list[float]], fit_rows: Rows,
              other_rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrices of ``fit_rows`` and ``other_rows``; a column missing in every fitted
    row is zeroed in both (it breaks the binning and carries nothing)."""
    x_fit = np.array([features(r) for r in fit_rows], dtype=np.float64)
    x_other = np.array([features(r) for r in other_rows], dtype=np.float64)
    empty = np.isnan(x_fit).all(0)
    x_fit[:, empty], x_other[:, empty] = 0.0, 0.0
    return x_fit, x_other


def _regressor(n_train: int, seed: int) -> HistGradientBoostingRegressor:
    """The boosted trees of the label: leaves of at least a tenth of the rows (2..20)."""
    leaf = int(min(20, max(2, n_train // 10)))
    return HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, min_samples_leaf=leaf, random_state=seed)


def _gbt(features: Callable[[dict], list[float]]):
    def method(train_rows: Rows, test_rows: Rows, seed: int, target: str = "test_acc") -> np.ndarray:
        x_tr, x_te = _matrices(features, train_rows, test_rows)
        y_tr = np.array([r[target] for r in train_rows], dtype=np.float64)
        return _regressor(len(train_rows), seed).fit(x_tr, y_tr).predict(x_te)
    method.__doc__ = f"HistGradientBoostingRegressor on :func:`{features.__name__}`."
    return method


arch_only = _gbt(arch_features)
hparams = _gbt(hparam_features)
statnn = _gbt(statnn_features)


def statnn_recipe(train_rows: Rows, test_rows: Rows, seed: int, target: str = "test_acc",
                  unlabeled: Rows = ()) -> np.ndarray:
    """Semi-supervised StatNN, the side-by-side reference for the GMN's recipe pre-training:
    one boosted-tree regressor per :data:`RECIPE` column learns the recipe from
    :func:`statnn_features` on the training *and* unlabelled rows (recipes are metadata, no
    accuracy is read); the recipe it predicts (out of fold, 5 folds, for the rows it was fitted
    on) is appended to the StatNN features of the accuracy regressor."""
    from sklearn.model_selection import cross_val_predict

    pool = [*train_rows, *unlabeled]
    x_pool, x_te = _matrices(statnn_features, pool, test_rows)
    recipe = np.array([recipe_features(r) for r in pool], dtype=np.float64)
    guess_pool, guess_te = [], []
    for column in recipe.T:
        model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=seed)
        guess_pool.append(cross_val_predict(model, x_pool, column, cv=5))
        guess_te.append(model.fit(x_pool, column).predict(x_te))
    n = len(train_rows)
    x_tr = np.hstack([x_pool[:n], np.array(guess_pool).T[:n]])
    x_te = np.hstack([x_te, np.array(guess_te).T])
    y_tr = np.array([r[target] for r in train_rows], dtype=np.float64)
    return _regressor(n, seed).fit(x_tr, y_tr).predict(x_te)


class ParamDeepSets(nn.Module):
    """φ([value, emb(index), emb(index from end), emb(kind)]) → mean per network → ρ."""

    def __init__(self, hidden: int = 64, emb: int = 8, out: int = 1):
        super().__init__()
        self.index_emb = nn.Embedding(MAX_LAYER, emb)
        self.rev_emb = nn.Embedding(MAX_LAYER, emb)
        self.kind_emb = nn.Embedding(len(KINDS), emb)
        self.phi = nn.Sequential(nn.Linear(1 + 3 * emb, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, value, index, rev, kind, segment, n_nets: int) -> torch.Tensor:
        h = torch.cat([value[:, None], self.index_emb(index), self.rev_emb(rev), self.kind_emb(kind)], 1)
        h = self.phi(h)
        pooled = torch.zeros(n_nets, h.shape[1]).index_add_(0, segment, h)
        counts = torch.zeros(n_nets).index_add_(0, segment, torch.ones(len(segment)))
        out = self.rho(pooled / counts[:, None])
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def value_scale(rows: Rows) -> float:
    """Root-mean-square of all parameter values of ``rows`` (inputs are divided by it)."""
    total = sum(float(np.square(_params(r)[0], dtype=np.float64).sum()) for r in rows)
    return math.sqrt(total / max(1, sum(_params(r)[0].size for r in rows))) or 1.0


def set_batch(rows: Rows, max_elements: int, gen: np.random.Generator | None, scale: float):
    """Packed elements of ``rows`` (at most ``max_elements`` per network, a random subset
    from ``gen`` or evenly spaced ones when ``gen`` is None); values divided by ``scale``."""
    parts = []
    for i, row in enumerate(rows):
        values, index, count, kind = _params(row)
        n = values.size
        if n > max_elements:
            pick = (np.sort(gen.choice(n, max_elements, replace=False)) if gen is not None
                    else np.linspace(0, n - 1, max_elements).astype(np.int64))
        else:
            pick = np.arange(n)
        rev = int(count) - 1 - index[pick].astype(np.int64)
        parts.append((values[pick], index[pick], rev, kind[pick], np.full(pick.size, i)))
    cat = [np.concatenate(p) for p in zip(*parts)]
    return (torch.from_numpy(np.clip(cat[0] / scale, -10, 10)).float(),
            torch.from_numpy(cat[1].astype(np.int64)).clamp_(max=MAX_LAYER - 1),
            torch.from_numpy(cat[2]).clamp_(max=MAX_LAYER - 1),
            torch.from_numpy(cat[3].astype(np.int64)), torch.from_numpy(cat[4]).long())


class DMC(nn.Module):
    """1-D CNN over (parameter value, mask) of length :data:`DMC_LENGTH` → regression."""

    def __init__(self, channels: int = 32):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv1d(2, c // 2, 9, stride=2, padding=4), nn.ReLU(),
            nn.Conv1d(c // 2, c, 9, stride=4, padding=4), nn.ReLU(),
            nn.Conv1d(c, c, 9, stride=4, padding=4), nn.ReLU(),
            nn.Conv1d(c, 2 * c, 9, stride=4, padding=4), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4 * c, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], 1)).squeeze(-1)


def dmc_input(row: dict, length: int = DMC_LENGTH, scale: float = 1.0) -> np.ndarray:
    """``[2, length]``: the flattened parameters divided by ``scale`` (first and last
    ``length // 2`` if longer, zero-padded if shorter; clipped to [-10, 10]) and a mask (1
    where a parameter is)."""
    values = _params(row)[0] / scale
    if values.size > length:
        values = np.concatenate([values[: length // 2], values[-(length - length // 2):]])
    out = np.zeros((2, length), np.float32)
    out[0, : values.size] = np.clip(values, -10, 10)
    out[1, : values.size] = 1.0
    return out


def _train_regressor(model: nn.Module, forward: Callable, n_train: int, y: torch.Tensor, seed: int,
                     epochs: int, batch_size: int, lr: float) -> None:
    """Adam on MSE; ``forward(indices, epoch)`` returns predictions for those train rows."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n_train, generator=gen)
        for s in range(0, n_train, batch_size):
            idx = perm[s:s + batch_size]
            loss = torch.nn.functional.mse_loss(forward(idx, epoch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def deepsets(train_rows: Rows, test_rows: Rows, seed: int, target: str = "test_acc", epochs: int = 40,
             max_elements: int = 512, batch_size: int = 16, lr: float = 1e-3) -> np.ndarray:
    """DeepSets over parameters (see :class:`ParamDeepSets`); values divided by the training
    rows' :func:`value_scale`; ``max_elements`` random parameters per network and step while
    training, ``4 * max_elements`` evenly spaced ones when predicting."""
    torch.manual_seed(seed)
    y = torch.tensor([r[target] for r in train_rows], dtype=torch.float32)
    mu, sd = y.mean(), y.std().clamp_min(1e-6)
    model = ParamDeepSets()
    rng = np.random.default_rng(seed)
    scale = value_scale(train_rows)

    def forward(idx, _epoch):
        rows = [train_rows[i] for i in idx.tolist()]
        return model(*set_batch(rows, max_elements, rng, scale), len(rows))

    _train_regressor(model, forward, len(train_rows), (y - mu) / sd, seed, epochs, batch_size, lr)
    preds = []
    with torch.no_grad():
        for s in range(0, len(test_rows), 64):
            rows = test_rows[s:s + 64]
            preds.append(model(*set_batch(rows, 4 * max_elements, None, scale), len(rows)))
    return (torch.cat(preds) * sd + mu).numpy()


def dmc(train_rows: Rows, test_rows: Rows, seed: int, target: str = "test_acc", epochs: int = 40,
        batch_size: int = 16, lr: float = 1e-3) -> np.ndarray:
    """DMC-style 1-D CNN over the flattened parameters divided by the training rows'
    :func:`value_scale` (see :class:`DMC`)."""
    torch.manual_seed(seed)
    scale = value_scale(train_rows)
    x_tr = torch.from_numpy(np.stack([dmc_input(r, scale=scale) for r in train_rows]))
    x_te = torch.from_numpy(np.stack([dmc_input(r, scale=scale) for r in test_rows]))
    y = torch.tensor([r[target] for r in train_rows], dtype=torch.float32)
    mu, sd = y.mean(), y.std().clamp_min(1e-6)
    model = DMC()
    _train_regressor(model, lambda idx, _e: model(x_tr[idx]), len(train_rows), (y - mu) / sd, seed,
                     epochs, batch_size, lr)
    with torch.no_grad():
        return (torch.cat([model(x_te[s:s + 256]) for s in range(0, len(x_te), 256)]) * sd + mu).numpy()


def constant(train_rows: Rows, test_rows: Rows, seed: int, target: str = "test_acc") -> np.ndarray:
    """The training mean for every test row (the R² = 0 reference)."""
    return np.full(len(test_rows), np.mean([r[target] for r in train_rows]))


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "constant": constant, "arch_only": arch_only, "hparams": hparams, "statnn": statnn,
    "deepsets": deepsets, "dmc": dmc, "statnn_recipe": statnn_recipe,
}
SEMI_SUPERVISED_BASELINES: frozenset[str] = frozenset({"statnn_recipe"})
