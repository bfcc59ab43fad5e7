"""The ``gmn`` method of :mod:`gmn_models.zoo.experiment`: a graph metanetwork trained on the
experiment's own train rows, predicting its test rows.

The zoo folder is compiled once into parameter graphs with
``gmn_models.datasets.ModelGraphDataset`` (cached under ``<zoo>/.cache/gmn``; not part of the
manifest), rows are matched to graphs by their ``path``, 10 % of the training rows (seeded) are
held out to pick the best epoch, and ``gmn_models.model.GMN`` is trained with AdamW on the MSE of
standardised targets. This is a deliberately small loop: ``gmn_models.training.train`` draws its
own random splits, whereas an experiment split (10 %, OOD) must be given from outside.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np
import torch

HIDDEN, BLOCKS, EPOCHS, BATCH, LR = 64, 4, 60, 32, 1e-3


@functools.lru_cache(maxsize=4)
def _dataset(root: str, target: str):
    try:
        from gmn_models.datasets import ModelGraphDataset
    except ImportError as exc:  # pragma: no cover - depends on the other half of issue 6
        raise NotImplementedError(f"GMN method: gmn_models.datasets not available yet ({exc})") from None
    return ModelGraphDataset(os.path.join(root, ".cache", "gmn"), root, [target], workers=0, progress=False)


def gmn_predict(train_rows: Sequence[dict], test_rows: Sequence[dict], seed: int, target: str = "test_acc",
                hidden: int = HIDDEN, num_blocks: int = BLOCKS, epochs: int = EPOCHS,
                batch_size: int = BATCH, lr: float = LR) -> np.ndarray:
    """Predictions of ``target`` for ``test_rows`` (all rows from one zoo folder)."""
    try:
        from torch_geometric.loader import DataLoader

        from gmn_models.model import GMN
    except ImportError as exc:  # pragma: no cover
        raise NotImplementedError(f"GMN method: gmn_models.model not available yet ({exc})") from None
    ds = _dataset(train_rows[0]["root"], target)
    position = {ds.metadata[mid]["path"]: i for i, mid in enumerate(ds.model_ids)}
    missing = [r["path"] for r in [*train_rows, *test_rows] if r["path"] not in position]
    if missing:
        raise ValueError(f"GMN method: {len(missing)} rows did not compile, e.g. {missing[0]} "
                         f"(dataset failures: {ds.failures[:1]})")
    order = np.random.default_rng(seed).permutation(len(train_rows))
    n_val = max(1, len(train_rows) // 10)
    val = [position[train_rows[i]["path"]] for i in order[:n_val]]
    fit = [position[train_rows[i]["path"]] for i in order[n_val:]]
    test = [position[r["path"]] for r in test_rows]
    y = torch.tensor([train_rows[i][target] for i in order[n_val:]], dtype=torch.float32)
    mu, sd = y.mean(), y.std().clamp_min(1e-6)

    torch.manual_seed(seed)
    model = GMN(hidden=hidden, num_blocks=num_blocks, graph_out=1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)

    def predict(positions: list[int]) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            out = [model(b).reshape(-1) for b in DataLoader(ds[positions], batch_size=64)]
        return torch.cat(out) * sd + mu

    best, best_state = float("inf"), None
    y_val = torch.tensor([ds[i].y.item() for i in val])
    for _ in range(epochs):
        model.train()
        for batch in DataLoader(ds[fit], batch_size=batch_size, shuffle=True, generator=gen):
            loss = torch.nn.functional.mse_loss(model(batch).reshape(-1), (batch.y.reshape(-1) - mu) / sd)
            opt.zero_grad()
            loss.backward()
            opt.step()
        val_loss = float(((predict(val) - y_val) ** 2).mean())
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return predict(test).numpy()
