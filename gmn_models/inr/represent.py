"""Self-supervised representations of sine-wave INRs (issue 13; GMN paper Table 3, after DWSNets).

    python -m gmn_models.inr.represent --zoo sine_std --splits random --seeds 3 --epochs 12 --out ssl.json

An encoder maps an INR fitted to ``a * sin(x + c)`` to an embedding of size ``dim``. It is trained
on the split's train rows only (:func:`~.classify.split`) with SimCLR's NT-Xent (:func:`nt_xent`)
between two augmented views of each INR, then frozen; a linear probe (:func:`linear_probe`) fitted
on the train embeddings predicts the test INRs' amplitude and phase. All methods share the
objective, augmentations, epochs, batch size and ``dim`` (:class:`Recipe`).

Augmentations (:class:`Augment`) act in parameter space, on values divided by the training rows'
RMS. :func:`jitter`, for every method: Gaussian noise of std ``noise`` x the INR's parameter RMS,
then each parameter set to 0 with probability ``drop``; for the GMN on parameter edges only
(structural edges untouched; every parameter of these INRs is exactly one edge, so it is the same
distribution as on the state dict). :func:`unit_permutation` (each hidden layer's units, with
their LayerNorm entries, and the Fourier features, permuted at random: the same function), first,
for ``mlp``, ``deepsets`` and ``nfn_np``; only ``mlp`` sees a difference (``deepsets`` and
``nfn_np`` are invariant to it by construction), and for the GMN it is not applied (it would
relabel the same graph).

Methods (:data:`METHODS`; learning rates as in :mod:`.classify`): ``gmn`` (:class:`~gmn_models.model.GMN`,
``graph_out=dim``); ``random_init`` (that GMN untrained: what contrastive training adds); ``mlp``
(flattened parameters, zero-padded); ``deepsets`` (:class:`~gmn_models.zoo.baselines.ParamDeepSets`);
``nfn_np`` (NFN NP layers; one MLP shape only, it refuses other zoos with ``ValueError``).
``rendered`` is a reference, not a method: the probe on each INR's output at the 64 sample points
(it reads the function, not the weights).

Metrics: test MSE of amplitude, of phase as stored (the DWSNets convention, though the phase is an
angle in [-pi, pi) that wraps around: c = pi - e and -pi + e are the same wave, far apart in MSE),
their sum, and the mean MSE of (sin c, cos c), which does not wrap. Chance is pi^2/3 = 3.29 for the
phase, 0.5 for (sin c, cos c); even a perfect (sin c, cos c) embedding gives a linear probe a phase
MSE of pi^2/3 - 2 = 1.29.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from gmn_compiler import schema

from ..zoo.baselines import ParamDeepSets, flat_parameters, set_batch, value_scale
from ..zoo.folder import load_state_dict
from .classify import trials
from .families import linear_weights
from .generate import load_rows
from .cli import check_methods, measured, results_table, run_task, task_parser
from .inputs import nfn_features, rendered_outputs, row_graphs, scaled_graph

Rows = Sequence[dict]
Layout = list[tuple[str, tuple[int, ...]]]
_VALUE = schema.EDGE_COLUMNS.index("value")


@dataclass(frozen=True)
class Recipe:
    """The contrastive recipe shared by every method (module docstring)."""

    dim: int = 32
    temperature: float = 0.1
    noise: float = 0.1
    drop: float = 0.05
    batch_size: int = 64
    probe_alpha: float = 1e-2


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent of ``[B, D]`` views: each of the 2B embeddings (L2-normalised) must pick
    its partner among the other 2B - 1 by cosine similarity / ``temperature``; mean over 2B."""
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return nn.functional.cross_entropy(sim, partner)


def jitter(values: torch.Tensor, gen: torch.Generator, noise: float, drop: float) -> torch.Tensor:
    """One INR's parameter values plus N(0, (noise x their RMS)^2), then each set to 0 with
    probability ``drop``."""
    rms = values.pow(2).mean().sqrt()
    noisy = values + noise * rms * torch.randn(values.shape, generator=gen)
    return noisy * (torch.rand(values.shape, generator=gen) >= drop)


def augment_graph(graph, gen: torch.Generator, noise: float, drop: float):
    """A copy of a parameter graph with :func:`jitter` on its parameter edges' values only."""
    graph, is_param = graph.clone(), graph.edge_param >= 0
    graph.edge_attr[is_param, _VALUE] = jitter(graph.edge_attr[is_param, _VALUE], gen, noise, drop)
    return graph


def unit_permutation(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """A gather index ``g`` over an INR's flat parameter vector (``layout``: names and shapes in
    flat order, :class:`~gmn_models.inr.families.INR` names) such that ``flat[g]`` is the same
    function with every hidden layer's units (and LayerNorm entries, and the Fourier features)
    randomly permuted."""
    ends = np.cumsum([math.prod(shape) for _, shape in layout])
    blocks = {name: np.arange(end - math.prod(shape), end).reshape(shape) for (name, shape), end in zip(layout, ends)}
    depth = sum(1 for name in blocks if name.startswith("hidden.") and name.endswith(".weight"))
    for i in range(depth):
        perm = rng.permutation(blocks[f"hidden.{i}.bias"].size)
        for name in (f"hidden.{i}.weight", f"hidden.{i}.bias", f"norms.{i}.weight", f"norms.{i}.bias"):
            if name in blocks:
                blocks[name] = blocks[name][perm]
        following = f"hidden.{i + 1}.weight" if i + 1 < depth else "out.weight"
        blocks[following] = blocks[following][:, perm]
    if "fourier.weight" in blocks:  # features cat(sin(2 pi B x), cos(2 pi B x)) feed hidden.0
        half = blocks["fourier.weight"].shape[0]
        perm = rng.permutation(half)
        blocks["fourier.weight"] = blocks["fourier.weight"][perm]
        blocks["hidden.0.weight"] = blocks["hidden.0.weight"][:, np.concatenate([perm, perm + half])]
    return np.concatenate([blocks[name].reshape(-1) for name, _ in layout])


def unflatten(flat: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """The state dict of a flat parameter vector."""
    sizes = [math.prod(shape) for _, shape in layout]
    return {name: part.reshape(shape) for (name, shape), part in zip(layout, torch.split(flat, sizes))}


class Augment:
    """The seeded random views of one training run: :meth:`flat` (:func:`unit_permutation`,
    then :func:`jitter`) for flat parameter vectors, :meth:`graph` for parameter graphs."""

    def __init__(self, recipe: Recipe, seed: int):
        self.gen, self.rng = torch.Generator().manual_seed(seed), np.random.default_rng([seed, 5])
        self.noise, self.drop = recipe.noise, recipe.drop

    def flat(self, values: torch.Tensor, layout: Layout) -> torch.Tensor:
        return jitter(values[unit_permutation(layout, self.rng)], self.gen, self.noise, self.drop)

    def graph(self, graph):
        return augment_graph(graph, self.gen, self.noise, self.drop)


@dataclass
class Encoder:
    """``encode(indices, augment or None) -> [len(indices), dim]`` for rows ``train + test``
    (indices into that list); ``module`` holds the trainable parameters."""

    module: nn.Module
    encode: Callable[[list[int], Augment | None], torch.Tensor]
    lr: float = 1e-3


def layouts(rows: Rows) -> list[Layout]:
    """Each row's state-dict names and shapes in the order of its flat parameter vector
    (:func:`~gmn_models.zoo.baselines.flat_parameters`), read once per architecture."""
    keys, seen = [json.dumps([r["root"], r["builder_kwargs"]], sort_keys=True) for r in rows], {}
    for key, r in zip(keys, rows):
        if key not in seen:
            seen[key] = [(k, tuple(v.shape)) for k, v in load_state_dict(r).items() if v.is_floating_point()]
    return [seen[key] for key in keys]


def _flat_views(rows: Rows, scale: float) -> tuple[Callable[[int, Augment | None], torch.Tensor], list[Layout]]:
    """``view(i, augment or None)``, row ``i``'s flat parameters divided by ``scale``, and the
    rows' :func:`layouts`."""
    values = [torch.from_numpy(flat_parameters(r["root"], r["path"])[0] / scale) for r in rows]
    lay = layouts(rows)
    return (lambda i, aug: values[i] if aug is None else aug.flat(values[i], lay[i])), lay


def mlp_encoder(rows: Rows, n_train: int, recipe: Recipe, seed: int = 0, hidden: int = 256) -> Encoder:
    """An MLP on the flattened parameters, zero-padded to the longest INR."""
    view, _ = _flat_views(rows, value_scale(rows[:n_train]))
    length = max(view(i, None).numel() for i in range(len(rows)))
    model = nn.Sequential(nn.Linear(length, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, recipe.dim))

    def encode(idx, aug):
        return model(torch.stack([nn.functional.pad(v, (0, length - v.numel())) for v in (view(i, aug) for i in idx)]))

    return Encoder(model, encode)


def deepsets_encoder(rows: Rows, n_train: int, recipe: Recipe, seed: int = 0, max_elements: int = 2048) -> Encoder:
    """DeepSets over the parameters: ``max_elements`` random ones per view, evenly spaced ones
    for the clean embedding (all of a standard SIREN's 1,153 either way)."""
    sets = [set_batch([r], 10 ** 9, None, value_scale(rows[:n_train])) for r in rows]  # all, flat order
    lay = layouts(rows)
    model = ParamDeepSets(out=recipe.dim)

    def encode(idx, aug):
        parts = []
        for j, i in enumerate(idx):
            value, index, rev, kind, _ = sets[i]
            value, n = (value if aug is None else aug.flat(value, lay[i])), value.numel()
            pick = (np.arange(n) if n <= max_elements else np.linspace(0, n - 1, max_elements).astype(np.int64)
                    if aug is None else np.sort(aug.rng.choice(n, max_elements, replace=False)))
            parts.append((value[pick], index[pick], rev[pick], kind[pick], torch.full((len(pick),), j)))
        return model(*[torch.cat(p) for p in zip(*parts)], len(idx))

    return Encoder(model, encode)


def nfn_np_encoder(rows: Rows, n_train: int, recipe: Recipe, seed: int = 0, hidden: int = 64) -> Encoder:
    """Two NFN NP layers, NP pooling, a linear map to ``dim``. One MLP shape only (ValueError)."""
    from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
    from nfn.layers import NPLinear, NPPool, TupleOp

    scale = value_scale(rows[:n_train])
    clean = nfn_features(rows, scale)  # raises ValueError on a zoo of several shapes
    view, lay = _flat_views(rows, scale)
    spec = network_spec_from_wsfeat(clean, set_all_dims=True)
    model = nn.Sequential(NPLinear(spec, 1, hidden), TupleOp(nn.ReLU()), NPLinear(spec, hidden, hidden),
                          TupleOp(nn.ReLU()), NPPool(spec), nn.Flatten(1),
                          nn.Linear(hidden * NPPool.get_num_outs(spec), recipe.dim))

    def encode(idx, aug):
        if aug is None:
            return model(WeightSpaceFeatures([w[idx] for w in clean.weights], [b[idx] for b in clean.biases]))
        states = [linear_weights(unflatten(view(i, aug), lay[i])) for i in idx]
        weights, biases = ([torch.stack([s[j][k] for s in states])[:, None] for k in range(len(states[0][j]))]
                           for j in (0, 1))
        return model(WeightSpaceFeatures(weights, biases))

    return Encoder(model, encode)


def gmn_encoder(rows: Rows, n_train: int, recipe: Recipe, seed: int = 0, hidden: int = 32,
                num_blocks: int = 3) -> Encoder:
    """A GMN (``graph_out=dim``) on the compiled parameter graphs (cached under ``<zoo>/.cache``)."""
    from torch_geometric.data import Batch

    from ..model import GMN

    scale = value_scale(rows[:n_train])
    graphs = [scaled_graph(g, scale) for g in row_graphs(rows, "amplitude")]
    model = GMN(hidden=hidden, num_blocks=num_blocks, graph_out=recipe.dim, seed=seed)

    def encode(idx, aug):
        return model(Batch.from_data_list([graphs[i] if aug is None else aug.graph(graphs[i]) for i in idx]))

    return Encoder(model, encode, lr=3e-3)


def train_contrastive(encoder: Encoder, n_train: int, seed: int, epochs: int, recipe: Recipe) -> float:
    """AdamW on :func:`nt_xent` of two :class:`Augment` views of rows ``0 .. n_train - 1``,
    cosine schedule; returns the last epoch's mean loss (NaN with no epochs)."""
    module, bs = encoder.module, recipe.batch_size
    opt = torch.optim.AdamW(module.parameters(), lr=encoder.lr, weight_decay=1e-4)
    steps = max(1, epochs * math.ceil(n_train / bs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen, aug, last = torch.Generator().manual_seed(seed), Augment(recipe, seed), float("nan")
    module.train()
    for _ in range(epochs):
        perm, losses = torch.randperm(n_train, generator=gen), []
        for s in range(0, n_train, bs):
            idx = perm[s:s + bs].tolist()
            if len(idx) < 2:  # no negatives to contrast with
                continue
            loss = nt_xent(encoder.encode(idx, aug), encoder.encode(idx, aug), recipe.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        last = float(np.mean(losses))
    module.eval()
    return last


def embed(encoder: Encoder, indices: Sequence[int], batch_size: int = 128) -> np.ndarray:
    """Clean (unaugmented) embeddings ``[len(indices), dim]`` of the frozen encoder."""
    encoder.module.eval()
    with torch.no_grad():
        return torch.cat([encoder.encode(list(indices[s:s + batch_size]), None)
                          for s in range(0, len(indices), batch_size)]).numpy()


def representations(method: str, train_rows: Rows, test_rows: Rows, seed: int, epochs: int,
                    recipe: Recipe = Recipe()) -> tuple[np.ndarray, np.ndarray, float]:
    """Train ``method``'s encoder (``METHODS``) on ``train_rows`` and embed both sets: ``(train
    [n_train, dim], test [n_test, dim], last contrastive loss)``; ``rendered`` gives the INRs'
    outputs at the 64 points (``[n, 64]``, loss NaN), ``random_init`` the GMN untrained."""
    if method == "rendered":
        return rendered_outputs(train_rows), rendered_outputs(test_rows), float("nan")
    rows, n_train = [*train_rows, *test_rows], len(train_rows)
    torch.manual_seed(seed)
    encoder = METHODS[method](rows, n_train, recipe, seed=seed)
    loss = train_contrastive(encoder, n_train, seed, 0 if method == "random_init" else epochs, recipe)
    return embed(encoder, range(n_train)), embed(encoder, range(n_train, len(rows))), loss


def targets(rows: Rows) -> np.ndarray:
    """``[n, 4]``: amplitude, phase (as stored, in [-pi, pi)), sin(phase), cos(phase)."""
    a, c = (np.array([r[k] for r in rows], dtype=np.float64) for k in ("amplitude", "phase"))
    return np.stack([a, c, np.sin(c), np.cos(c)], 1)


def linear_probe(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray,
                 alpha: float = 1e-2) -> dict[str, float]:
    """``Ridge(alpha)`` on embeddings standardised with the train statistics, one output per
    column of :func:`targets`; test MSEs of amplitude, phase, their sum, and of (sin, cos)."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(z_train)
    pred = Ridge(alpha=alpha, solver="svd").fit(scaler.transform(z_train), y_train).predict(scaler.transform(z_test))
    mse = ((pred - y_test) ** 2).mean(0)
    return {"mse_amplitude": float(mse[0]), "mse_phase": float(mse[1]), "mse_total": float(mse[0] + mse[1]),
            "mse_phase_sincos": float(mse[2:].mean())}


METHODS: dict[str, Callable[..., Encoder] | None] = {
    "rendered": None, "random_init": gmn_encoder, "mlp": mlp_encoder, "deepsets": deepsets_encoder,
    "nfn_np": nfn_np_encoder, "gmn": gmn_encoder,
}


def _probe(method: str, train_rows: Rows, test_rows: Rows, seed: int, epochs: int, recipe: Recipe) -> dict:
    """Probe MSEs of ``method``'s representations and its last contrastive loss."""
    z_tr, z_te, loss = representations(method, train_rows, test_rows, seed, epochs, recipe)
    result = linear_probe(z_tr, targets(train_rows), z_te, targets(test_rows), recipe.probe_alpha)
    return {**result, "loss": None if math.isnan(loss) else round(loss, 4)}


def run(zoo: str, methods: Sequence[str], splits: Sequence[str], seeds: int, epochs: int,
        recipe: Recipe = Recipe(), log=None) -> list[dict]:
    """One record per (split, seed, method): probe MSEs, last contrastive loss, seconds; a
    method that refuses the zoo (NFN on several architectures) is recorded with its reason."""
    check_methods(methods, METHODS)
    records = []
    for how, seed, train_rows, test_rows in trials(load_rows(zoo), splits, seeds):
        for name in methods:
            record = {"method": name, "split": how, "seed": seed, "n_train": len(train_rows),
                      "n_test": len(test_rows), "dim": recipe.dim,
                      "epochs": 0 if name in ("rendered", "random_init") else epochs}
            records.append(measured(record, lambda: _probe(name, train_rows, test_rows, seed, epochs, recipe), log))
    return records


def markdown_table(records: Sequence[dict]) -> str:
    """Probe test MSE (amplitude, phase, sum, (sin, cos) of phase) mean ± std over seeds per
    method and split, with mean seconds per run; ``rendered`` is marked as a reference."""
    columns = [("mse_amplitude", "amp. MSE", 1.0, 3), ("mse_phase", "phase MSE", 1.0, 3),
               ("mse_total", "total MSE", 1.0, 3), ("mse_phase_sincos", "(sin, cos) MSE", 1.0, 3)]
    return results_table(records, columns, lambda m: f"{m} (reference)" if m == "rendered" else m)


def main(argv: list[str] | None = None) -> int:
    p = task_parser("python -m gmn_models.inr.represent",
                    "Contrastive INR representations, probed for amplitude and phase.",
                    "a sine INR zoo folder (python -m gmn_models.inr.generate)", METHODS, 20)
    p.add_argument("--dim", type=int, default=Recipe.dim, help="embedding size")
    p.add_argument("--noise", type=float, default=Recipe.noise, help="noise std / the INR's parameter RMS")
    p.add_argument("--drop", type=float, default=Recipe.drop, help="probability of zeroing a parameter")
    args = p.parse_args(argv)
    recipe = Recipe(dim=args.dim, noise=args.noise, drop=args.drop)
    return run_task(args, lambda: run(args.zoo, args.methods.split(","), args.splits.split(","), args.seeds,
                                      args.epochs, recipe, sys.stderr), markdown_table)


if __name__ == "__main__":
    raise SystemExit(main())
