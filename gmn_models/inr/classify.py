"""INR classification: the digit an MNIST INR draws, predicted from its weights alone.

    python -m gmn_models.inr.classify --zoo inr_std --methods mlp,deepsets,statnn,nfn_np,nfn_hnp,gmn \\
        --seeds 3 --out results_classify.json

Splits (:func:`split`): ``random`` — a seeded 20 % test set, train on the rest; ``ood`` (a zoo
of several architectures only) — every INR of a fixed quarter of the architectures (builder
kwargs) is a test INR, so test architectures are never seen in training.

Methods (each ``fn(train_rows, test_rows, seed, epochs) -> predicted classes``; all trained for
the same number of epochs, no early stopping, parameter values divided by the training rows'
RMS):

* ``mlp`` — an MLP on the flattened parameters, zero-padded to the longest INR;
* ``deepsets`` — DeepSets over parameters (:class:`gmn_models.zoo.baselines.ParamDeepSets`);
* ``statnn`` — StatNN statistics, ``HistGradientBoostingClassifier``;
* ``nfn_np`` / ``nfn_hnp`` — neural functionals from the ``nfn`` package (Zhou et al. 2023):
  two NP / HNP layers, pooling, a linear head. They need every INR to be one plain MLP shape
  (the standard setting) and refuse other zoos;
* ``gmn`` — :class:`gmn_models.model.GMN` on the compiled parameter graphs;
* ``rendered`` — a reference that reads the function, not the weights: logistic regression on
  the picture each INR draws.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..zoo.baselines import ParamDeepSets, flat_parameters, set_batch, statnn_features, value_scale
from .cli import check_methods, measured, results_table, run_task, task_parser
from .inputs import flat_inputs, nfn_features, rendered_outputs, row_graphs, scaled_graph
from .generate import load_rows

CLASSES = 10
SPLITS = ("random", "ood")
TEST_FRACTION = 0.2
Rows = Sequence[dict]


def split(rows: Rows, how: str, seed: int) -> tuple[list[int], list[int]]:
    """Train and test row indices (module docstring)."""
    n = len(rows)
    if how == "random":
        order = np.random.default_rng([seed, 21]).permutation(n)
        cut = int(round(n * TEST_FRACTION))
        return sorted(order[cut:].tolist()), sorted(order[:cut].tolist())
    if how == "ood":
        archs = sorted({json.dumps(r["builder_kwargs"], sort_keys=True) for r in rows})
        if len(archs) < 4:
            raise ValueError(f"the ood split needs a zoo of at least 4 architectures, this one has {len(archs)}")
        held = set(np.random.default_rng(0).permutation(archs)[: len(archs) // 4].tolist())
        test = [i for i, r in enumerate(rows) if json.dumps(r["builder_kwargs"], sort_keys=True) in held]
        return [i for i in range(n) if i not in set(test)], test
    raise ValueError(f"unknown split {how!r}; expected one of {list(SPLITS)}")


def trials(rows: Rows, splits: Sequence[str], seeds: int) -> Iterator[tuple[str, int, list[dict], list[dict]]]:
    """``(split, seed, train rows, test rows)`` for every split of ``splits`` and seed
    ``0 .. seeds - 1`` (:func:`split`)."""
    for how in splits:
        for seed in range(seeds):
            train_idx, test_idx = split(rows, how, seed)
            yield how, seed, [rows[i] for i in train_idx], [rows[i] for i in test_idx]


def _labels(rows: Rows) -> torch.Tensor:
    return torch.tensor([int(r["label"]) for r in rows])


def _train(model: nn.Module, logits: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, seed: int,
           epochs: int, batch_size: int = 64, lr: float = 1e-3) -> None:
    """AdamW on cross-entropy, cosine schedule; ``logits(indices)`` for those training rows."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), batch_size):
            idx = perm[s:s + batch_size]
            loss = nn.functional.cross_entropy(logits(idx), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def _predict(logits: Callable[[torch.Tensor], torch.Tensor], n: int, batch_size: int = 256) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([logits(torch.arange(s, min(n, s + batch_size))).argmax(-1)
                          for s in range(0, n, batch_size)]).numpy()


def mlp(train_rows: Rows, test_rows: Rows, seed: int, epochs: int = 50, hidden: int = 256) -> np.ndarray:
    """An MLP on the flattened parameters, zero-padded to the longest INR of either set."""
    torch.manual_seed(seed)
    scale = value_scale(train_rows)
    length = max(flat_parameters(r["root"], r["path"])[0].size for r in [*train_rows, *test_rows])
    x_tr, x_te = flat_inputs(train_rows, length, scale), flat_inputs(test_rows, length, scale)
    model = nn.Sequential(nn.Linear(length, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, CLASSES))
    _train(model, lambda idx: model(x_tr[idx]), _labels(train_rows), seed, epochs)
    return _predict(lambda idx: model(x_te[idx]), len(test_rows))


def deepsets(train_rows: Rows, test_rows: Rows, seed: int, epochs: int = 50, max_elements: int = 512) -> np.ndarray:
    """DeepSets over the parameters (``max_elements`` random ones per INR and step)."""
    torch.manual_seed(seed)
    scale, rng = value_scale(train_rows), np.random.default_rng(seed)
    model = ParamDeepSets(out=CLASSES)

    def train_logits(idx):
        rows = [train_rows[i] for i in idx.tolist()]
        return model(*set_batch(rows, max_elements, rng, scale), len(rows))

    def test_logits(idx):
        rows = [test_rows[i] for i in idx.tolist()]
        return model(*set_batch(rows, 4 * max_elements, None, scale), len(rows))

    _train(model, train_logits, _labels(train_rows), seed, epochs, batch_size=32)
    return _predict(test_logits, len(test_rows), batch_size=64)


def statnn(train_rows: Rows, test_rows: Rows, seed: int, epochs: int = 0) -> np.ndarray:
    """StatNN features, gradient-boosted trees (``epochs`` unused)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    x_tr = np.array([statnn_features(r) for r in train_rows])
    x_te = np.array([statnn_features(r) for r in test_rows])
    empty = np.isnan(x_tr).all(0)
    x_tr[:, empty], x_te[:, empty] = 0.0, 0.0
    model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=seed)
    # as many OpenMP threads as torch uses: on a busy machine more spin-wait (82 s instead of 1 s
    # for 51 INRs, measured)
    with threadpool_limits(torch.get_num_threads(), user_api="openmp"):
        return model.fit(x_tr, _labels(train_rows).numpy()).predict(x_te)


def _nfn(kind: str):
    def method(train_rows: Rows, test_rows: Rows, seed: int, epochs: int = 50, hidden: int = 64) -> np.ndarray:
        from nfn.common import network_spec_from_wsfeat
        from nfn.layers import HNPLinear, HNPPool, NPLinear, NPPool, TupleOp

        torch.manual_seed(seed)
        scale = value_scale(train_rows)
        tr, te = nfn_features(train_rows, scale), nfn_features(test_rows, scale)
        spec = network_spec_from_wsfeat(tr, set_all_dims=True)
        layer, pool = (NPLinear, NPPool) if kind == "np" else (HNPLinear, HNPPool)
        model = nn.Sequential(layer(spec, 1, hidden), TupleOp(nn.ReLU()), layer(spec, hidden, hidden),
                              TupleOp(nn.ReLU()), pool(spec), nn.Flatten(1),
                              nn.Linear(hidden * pool.get_num_outs(spec), CLASSES))

        def take(ws, idx):
            return type(ws)([w[idx] for w in ws.weights], [b[idx] for b in ws.biases])

        _train(model, lambda idx: model(take(tr, idx)), _labels(train_rows), seed, epochs)
        return _predict(lambda idx: model(take(te, idx)), len(test_rows))
    method.__doc__ = f"NFN ({kind.upper()}) from the ``nfn`` package."
    return method


def gmn(train_rows: Rows, test_rows: Rows, seed: int, epochs: int = 50, hidden: int = 32,
        num_blocks: int = 3) -> np.ndarray:
    """A GMN on the parameter graphs (compiled once per zoo, cached under ``<zoo>/.cache``),
    parameter values divided by the training rows' RMS as for the baselines."""
    from torch_geometric.data import Batch

    from ..model import GMN

    scale = value_scale(train_rows)
    graphs = [scaled_graph(g, scale) for g in row_graphs([*train_rows, *test_rows])]
    train, test = graphs[:len(train_rows)], graphs[len(train_rows):]
    torch.manual_seed(seed)
    model = GMN(hidden=hidden, num_blocks=num_blocks, graph_out=CLASSES, seed=seed)
    _train(model, lambda idx: model(Batch.from_data_list([train[i] for i in idx.tolist()])),
           _labels(train_rows), seed, epochs, batch_size=32, lr=3e-3)
    return _predict(lambda idx: model(Batch.from_data_list([test[i] for i in idx.tolist()])), len(test_rows), 128)


def rendered(train_rows: Rows, test_rows: Rows, seed: int, epochs: int = 0) -> np.ndarray:
    """A reference, not a weight-space method: logistic regression on the picture each INR
    draws (``epochs`` unused). It shows how much of the class the functions carry."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000, random_state=seed)
    return model.fit(rendered_outputs(train_rows), _labels(train_rows).numpy()).predict(rendered_outputs(test_rows))


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "rendered": rendered, "mlp": mlp, "deepsets": deepsets, "statnn": statnn, "nfn_np": _nfn("np"), "nfn_hnp": _nfn("hnp"), "gmn": gmn,
}


def run(zoo: str, methods: Sequence[str], splits: Sequence[str], seeds: int, epochs: int, log=None) -> list[dict]:
    """One record per (split, seed, method): test accuracy and seconds; a method that refuses
    the zoo (NFN on mixed architectures) is recorded with its reason instead."""
    check_methods(methods, METHODS)
    records = []
    for how, seed, train_rows, test_rows in trials(load_rows(zoo), splits, seeds):
        truth = _labels(test_rows).numpy()
        for name in methods:
            record = {"method": name, "split": how, "seed": seed, "n_train": len(train_rows),
                      "n_test": len(test_rows)}
            predict = METHODS[name]
            records.append(measured(record, lambda: {
                "accuracy": float(np.mean(predict(train_rows, test_rows, seed, epochs=epochs) == truth))}, log))
    return records


def markdown_table(records: Sequence[dict]) -> str:
    """Test accuracy (%) mean ± std over seeds, per method and split, with mean seconds per run."""
    return results_table(records, [("accuracy", "acc. (%)", 100.0, 1)])


def main(argv: list[str] | None = None) -> int:
    p = task_parser("python -m gmn_models.inr.classify", "INR classification: predict the digit from an INR's weights.",
                    "an INR zoo folder (python -m gmn_models.inr.generate)", METHODS, 50)
    args = p.parse_args(argv)
    return run_task(args, lambda: run(args.zoo, args.methods.split(","), args.splits.split(","), args.seeds,
                                      args.epochs, sys.stderr), markdown_table)


if __name__ == "__main__":
    raise SystemExit(main())
