"""INR editing: change an INR's weights so that it draws the edited picture (issue 13, the GMN
paper's Table 2, after NFN).

    python -m gmn_models.inr.editing --zoo inr_std --edit dilate --methods identity,mlp,nfn_np,gmn \\
        --seeds 3 --epochs 30 --out edit_dilate.json

Task: for an MNIST INR with parameters θ, an editor returns θ' = θ + γ Δ(θ) (γ a learned scalar,
Δ the editor's output, scaled back from the normalised inputs); the loss and the metric are the
mean squared error between the picture the edited INR draws at the 28x28 pixel centres and the
edited image (:func:`~.edit.apply_edit` of the INR's digit: ``dilate`` or ``contrast``),
intensities in [0, 1]. Targets are the edited *dataset* images, as in NFN, so even a perfect
edit keeps the INR's own reconstruction error.

Editors (each trained with Adam for the same number of epochs on the split's training INRs,
evaluated on its test INRs; parameter values divided by the training rows' RMS on input):

* ``identity`` — θ' = θ: the error of not editing;
* ``mlp`` — an MLP from the flattened parameters (zero-padded to the longest INR) to Δ;
* ``nfn_np`` / ``nfn_hnp`` — NFN layers (``nfn`` package) from θ to Δ; one MLP shape only;
* ``gmn`` — :class:`gmn_models.model.EditGMN`: Δ is the GMN's readout on every parameter edge
  of the compiled graph, and :meth:`gmn_compiler.ParameterGraph.to_state_dict` turns the new
  edge values into the INR's parameters (differentiably).

Splits are those of INR classification (:func:`~.classify.split`): ``random`` and ``ood``
(architectures held out; a diverse zoo only).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import schema
from gmn_compiler.fileio import write_atomically

from ..zoo.baselines import flat_parameters, value_scale
from ..zoo.folder import load_state_dict
from . import data as idata
from .classify import trials
from .edit import EDITS, Architectures, apply_edit
from .generate import load_rows
from .cli import check_methods, measured, results_table, run_task, task_parser
from .inputs import flat_inputs, nfn_features, row_graphs, scaled_graph

Rows = Sequence[dict]
State = dict[str, torch.Tensor]


@dataclass
class EditSet:
    """The INRs of one side of a split: rows, stored parameters, edited target images ``[n, P]``."""

    rows: list[dict]
    states: list[State]
    targets: torch.Tensor
    coords: torch.Tensor
    shape: tuple[int, ...]


def edit_set(rows: Rows, edit: str) -> EditSet:
    """Rows with their parameters and targets (``edit`` of each row's dataset image)."""
    if edit not in EDITS:
        raise ValueError(f"unknown edit {edit!r}; expected one of {list(EDITS)}")
    datasets = {r["dataset"] for r in rows}
    if len(datasets) != 1 or next(iter(datasets)) == "sine":
        raise ValueError(f"INR editing needs INRs of one image dataset, got {sorted(datasets)}")
    signals = idata.load(next(iter(datasets)))
    index = torch.tensor([int(r["signal"]) for r in rows])
    images = signals.targets[index, :, 0].reshape(len(rows), *signals.shape)
    targets = apply_edit(edit, images).reshape(len(rows), -1)
    return EditSet(list(rows), [load_state_dict(r) for r in rows], targets, signals.coords, signals.shape)


def edit_mse(archs: Architectures, data: EditSet, idx: Sequence[int], states: Sequence[State]) -> torch.Tensor:
    """Per-INR MSE ``[len(idx)]`` between the pictures drawn with ``states`` and the targets."""
    drawn = torch.stack([archs.render(data.rows[i], s, data.coords) for i, s in zip(idx, states)])
    return ((drawn - data.targets[list(idx)]) ** 2).mean(1)


Editor = Callable[[Sequence[int], bool], list[State]]  # (indices, train side?) -> edited states


def _fit(model: nn.Module, editor: Editor, archs: Architectures, train: EditSet, seed: int, epochs: int,
         batch_size: int = 32, lr: float = 1e-3) -> None:
    """Adam on the edit MSE of the training INRs, cosine schedule."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, epochs * math.ceil(len(train.rows) / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train.rows), generator=gen)
        for s in range(0, len(perm), batch_size):
            idx = perm[s:s + batch_size].tolist()
            loss = edit_mse(archs, train, idx, editor(idx, True)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def _evaluate(editor: Editor, archs: Architectures, test: EditSet, batch_size: int = 128) -> tuple[np.ndarray, torch.Tensor]:
    """Per-INR test MSE and the edited pictures ``[n, P]``."""
    mse, drawn = [], []
    with torch.no_grad():
        for s in range(0, len(test.rows), batch_size):
            idx = list(range(s, min(len(test.rows), s + batch_size)))
            states = editor(idx, False)
            mse.append(edit_mse(archs, test, idx, states))
            drawn.append(torch.stack([archs.render(test.rows[i], st, test.coords) for i, st in zip(idx, states)]))
    return torch.cat(mse).numpy(), torch.cat(drawn)


class _Gamma(nn.Module):
    """θ' = θ + γ · scale · Δ with a learned γ (initialised small: the untrained editor is
    nearly the identity)."""

    def __init__(self, body: nn.Module, scale: float, gamma_init: float = 0.1) -> None:
        super().__init__()
        self.body, self.scale = body, scale
        self.gamma = nn.Parameter(torch.tensor(gamma_init))

    def step(self, delta: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.scale * delta


def _unflatten(state: State, flat: torch.Tensor) -> State:
    """``state``'s floating-point tensors plus ``flat`` (in state-dict order, as
    :func:`~gmn_models.zoo.baselines.flat_parameters` lists them)."""
    out, at = {}, 0
    for name, t in state.items():
        if not t.is_floating_point():
            out[name] = t
            continue
        out[name] = t + flat[at:at + t.numel()].view(t.shape)
        at += t.numel()
    return out


def identity(train: EditSet, test: EditSet, archs: Architectures, seed: int, epochs: int):
    """No edit: θ' = θ."""
    return lambda idx, is_train: [(train if is_train else test).states[i] for i in idx]


def mlp(train: EditSet, test: EditSet, archs: Architectures, seed: int, epochs: int, hidden: int = 256):
    """An MLP from the flattened, zero-padded parameters to Δ."""
    torch.manual_seed(seed)
    scale = value_scale(train.rows)
    length = max(flat_parameters(r["root"], r["path"])[0].size for r in [*train.rows, *test.rows])
    x = {True: flat_inputs(train.rows, length, scale), False: flat_inputs(test.rows, length, scale)}
    body = nn.Sequential(nn.Linear(length, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, length))
    model = _Gamma(body, scale)

    def editor(idx, is_train):
        side = train if is_train else test
        delta = model.step(body(x[is_train][idx]))
        return [_unflatten(side.states[i], d) for i, d in zip(idx, delta)]

    _fit(model, editor, archs, train, seed, epochs)
    return editor


def _nfn(kind: str):
    def method(train: EditSet, test: EditSet, archs: Architectures, seed: int, epochs: int, hidden: int = 32):
        from nfn.common import network_spec_from_wsfeat
        from nfn.layers import HNPLinear, NPLinear, TupleOp

        torch.manual_seed(seed)
        scale = value_scale(train.rows)
        feats = {True: nfn_features(train.rows, scale), False: nfn_features(test.rows, scale)}
        spec = network_spec_from_wsfeat(feats[True], set_all_dims=True)
        layer = NPLinear if kind == "np" else HNPLinear
        body = nn.Sequential(layer(spec, 1, hidden), TupleOp(nn.ReLU()), layer(spec, hidden, hidden),
                             TupleOp(nn.ReLU()), layer(spec, hidden, 1))
        model = _Gamma(body, scale)
        depth = len(feats[True].weights) - 1
        names = [f"hidden.{i}" for i in range(depth)] + ["out"]

        def editor(idx, is_train):
            ws = feats[is_train]
            out = body(type(ws)([w[idx] for w in ws.weights], [b[idx] for b in ws.biases]))
            states = []
            for j, i in enumerate(idx):
                state = dict((train if is_train else test).states[i])
                for n, w, b in zip(names, out.weights, out.biases):
                    state[f"{n}.weight"] = state[f"{n}.weight"] + model.step(w[j, 0])
                    state[f"{n}.bias"] = state[f"{n}.bias"] + model.step(b[j, 0])
                states.append(state)
            return states

        _fit(model, editor, archs, train, seed, epochs)
        return editor
    method.__doc__ = f"NFN ({kind.upper()}) layers from the ``nfn`` package, θ → Δ."
    return method


def gmn(train: EditSet, test: EditSet, archs: Architectures, seed: int, epochs: int, hidden: int = 32,
        num_blocks: int = 3):
    """:class:`~gmn_models.model.EditGMN` on the compiled graphs (values divided by the training
    RMS); new edge values → parameters with the architecture's ``to_state_dict``."""
    from torch_geometric.data import Batch

    from ..model import EditGMN

    scale = value_scale(train.rows)
    both = row_graphs([*train.rows, *test.rows])
    graphs = {True: both[:len(train.rows)], False: both[len(train.rows):]}
    for is_train, side in ((True, train), (False, test)):
        for row, g in zip(side.rows, graphs[is_train]):
            _check_edge_order(archs.graph(row), g, row)
    scaled = {k: [scaled_graph(g, scale) for g in v] for k, v in graphs.items()}
    torch.manual_seed(seed)
    model = EditGMN(hidden=hidden, num_blocks=num_blocks, seed=seed)
    value = schema.EDGE_COLUMNS.index("value")

    def editor(idx, is_train):
        side = train if is_train else test
        batch = Batch.from_data_list([scaled[is_train][i] for i in idx])
        delta = model.gamma * scale * model.delta(batch)
        states, at = [], 0
        for i in idx:
            g = graphs[is_train][i]
            new = g.edge_attr[:, value] + delta[at:at + g.num_edges]
            at += g.num_edges
            states.append({**side.states[i], **archs.graph(side.rows[i]).to_state_dict(new)})
        return states

    _fit(model, editor, archs, train, seed, epochs)
    return editor


def _check_edge_order(reference: gc.ParameterGraph, graph, row: dict) -> None:
    """The zoo's graph must list its parameter edges as the architecture's graph does."""
    same = (graph.edge_param.shape == reference.data.edge_param.shape
            and torch.equal(graph.edge_param, reference.data.edge_param)
            and torch.equal(graph.edge_offset, reference.data.edge_offset))
    if not same:
        raise ValueError(f"gmn: the compiled graph of {row['path']} does not list its parameters as "
                         "its architecture's graph does; recompile the zoo's graph cache")


METHODS: dict[str, Callable[..., Editor]] = {
    "identity": identity, "mlp": mlp, "nfn_np": _nfn("np"), "nfn_hnp": _nfn("hnp"), "gmn": gmn,
}


def run(zoo: str, edit: str, methods: Sequence[str], splits: Sequence[str], seeds: int, epochs: int,
        log=None, pictures: str | None = None) -> list[dict]:
    """One record per (split, seed, method): mean test MSE (and its std over INRs) and seconds;
    a method that refuses the zoo (NFN on mixed architectures) is recorded with its reason.
    With ``pictures``, a PNG of the first test INRs of split 0 / seed 0 is written there."""
    check_methods(methods, METHODS)
    archs, records = Architectures(), []
    for how, seed, train_rows, test_rows in trials(load_rows(zoo), splits, seeds):
        train, test = edit_set(train_rows, edit), edit_set(test_rows, edit)
        drawn: dict[str, torch.Tensor] = {}
        for name in methods:
            record = {"method": name, "edit": edit, "split": how, "seed": seed, "n_train": len(train.rows),
                      "n_test": len(test.rows)}

            def compute(name=name):
                mse, drawn[name] = _evaluate(METHODS[name](train, test, archs, seed, epochs), archs, test)
                return {"mse": float(mse.mean()), "mse_std_over_inrs": float(mse.std())}
            records.append(measured(record, compute, log))
        if pictures and how == splits[0] and seed == 0:
            save_pictures(pictures, test, drawn, edit)
    return records


def save_pictures(path: str, test: EditSet, drawn: dict[str, torch.Tensor], edit: str, count: int = 6) -> None:
    """A PNG grid: per row the target and every method's edited picture, for ``count`` test INRs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(test.rows))
    columns = [("target: " + edit, test.targets), *drawn.items()]
    fig, axes = plt.subplots(count, len(columns), figsize=(1.6 * len(columns), 1.6 * count), squeeze=False)
    for j, (title, pics) in enumerate(columns):
        for i in range(count):
            ax = axes[i, j]
            ax.imshow(pics[i].reshape(test.shape).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def markdown_table(records: Sequence[dict]) -> str:
    """Test MSE (x 100) mean ± std over seeds per method and split, with mean seconds per run."""
    return results_table(records, [("mse", "MSE x 100", 100.0, 3)])


def main(argv: list[str] | None = None) -> int:
    p = task_parser("python -m gmn_models.inr.editing",
                    "INR editing: learn to edit MNIST INRs' weights (dilate, contrast).",
                    "an MNIST INR zoo folder (python -m gmn_models.inr.generate)", METHODS, 30)
    p.add_argument("--edit", choices=EDITS, default="dilate")
    p.add_argument("--pictures", help="write sample edited pictures here (PNG)")
    args = p.parse_args(argv)
    return run_task(args, lambda: run(args.zoo, args.edit, args.methods.split(","), args.splits.split(","),
                                      args.seeds, args.epochs, sys.stderr, args.pictures), markdown_table)


if __name__ == "__main__":
    raise SystemExit(main())
