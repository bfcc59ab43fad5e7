"""What the weight-space methods of the INR tasks read: an INR zoo's rows as flat parameter
vectors, as NFN weight-space features, as compiled parameter graphs; and, for the references
that read the function instead, the picture each INR draws. Shared by :mod:`.classify`,
:mod:`.editing` and :mod:`.represent`."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from gmn_compiler import schema

from ..zoo.baselines import flat_parameters
from ..zoo.folder import load_state_dict
from . import data as idata
from .families import inr, linear_weights

Rows = Sequence[dict]


def flat_inputs(rows: Rows, length: int, scale: float) -> torch.Tensor:
    """Every row's parameters in state-dict order divided by ``scale``, zero-padded to
    ``length``: ``[n, length]``."""
    out = torch.zeros(len(rows), length)
    for i, r in enumerate(rows):
        values = flat_parameters(r["root"], r["path"])[0]
        out[i, : values.size] = torch.from_numpy(values / scale)
    return out


def nfn_features(rows: Rows, scale: float):
    """NFN's weight-space features of plain MLP INRs of one shape: weights ``[B, 1, out, in]``,
    biases ``[B, 1, out]``."""
    from nfn.common import WeightSpaceFeatures

    per_row = []
    for r in rows:
        try:
            per_row.append(linear_weights(load_state_dict(r)))
        except ValueError as e:
            raise ValueError(f"NFN needs every INR to have one MLP shape; {r['path']} is {e}") from None
    shapes = {tuple(tuple(w.shape) for w in ws) for ws, _ in per_row}
    if len(shapes) != 1:
        raise ValueError(f"NFN needs every INR to have one MLP shape; this zoo has {len(shapes)} "
                         "(run it on the standard setting)")
    weights = [torch.stack([ws[i] for ws, _ in per_row])[:, None] / scale for i in range(len(per_row[0][0]))]
    biases = [torch.stack([bs[i] for _, bs in per_row])[:, None] / scale for i in range(len(per_row[0][1]))]
    return WeightSpaceFeatures(weights, biases)


def scaled_graph(graph, scale: float):
    """A copy of ``graph`` whose parameter edges' values are divided by ``scale`` (structural
    edges, whose values are structure, keep theirs)."""
    graph = graph.clone()
    value, is_param = schema.EDGE_COLUMNS.index("value"), graph.edge_param >= 0
    graph.edge_attr[is_param, value] = graph.edge_attr[is_param, value] / scale
    return graph


def row_graphs(rows: Rows, target: str = "label") -> list:
    """The compiled parameter graph of every row, in row order (all rows from one zoo folder;
    compiled once per folder, cached under ``<zoo>/.cache``, with column ``target`` as the
    dataset's label). ``ValueError`` if a row's INR did not compile."""
    from ..zoo.gmn_method import zoo_graphs

    ds = zoo_graphs(rows[0]["root"], target)
    position = {ds.metadata[mid]["path"]: i for i, mid in enumerate(ds.model_ids)}
    missing = [r["path"] for r in rows if r["path"] not in position]
    if missing:
        raise ValueError(f"gmn: {len(missing)} INRs did not compile, e.g. {missing[0]} ({ds.failures[:1]})")
    return [ds[position[r["path"]]] for r in rows]


def rendered_outputs(rows: Rows) -> np.ndarray:
    """Each INR's output at its dataset's coordinates, ``[n, P]``."""
    coords: dict[str, torch.Tensor] = {}
    out = []
    with torch.no_grad():
        for r in rows:
            if r["dataset"] not in coords:
                coords[r["dataset"]] = idata.load(r["dataset"], 1).coords
            model = inr(**r["builder_kwargs"])
            model.load_state_dict(load_state_dict(r))
            out.append(model(coords[r["dataset"]]).reshape(-1).numpy())
    return np.stack(out)
