"""A layered drawing of a small parameter graph (matplotlib, Agg; no pyplot global state).

Layout: the x coordinate is the node's ``depth`` column; nodes of one depth are
stacked vertically. Input and neuron nodes sit on the integer column; auxiliary nodes (bias,
norm parameters, statistics, groups, heads, ties, parameter operands) sit a little to the
left of it, so their edges into the neurons of the same depth stay visible. Nodes are coloured
by role, edges by edge type; a legend lists only the roles and types present.
"""

from __future__ import annotations

import os

import torch

from . import schema
from .fileio import write_atomically

DEFAULT_MAX_EDGES = 2000
_AUX_SHIFT = 0.4  # horizontal offset of auxiliary nodes, in depth units


class DrawError(ValueError):
    """The graph cannot be drawn (too large, unknown image format)."""


def check_drawable(pg, max_edges: int = DEFAULT_MAX_EDGES) -> None:
    """Raise :class:`DrawError` (one line) unless ``pg`` has at most ``max_edges`` edges."""
    edges = int(pg.data.edge_index.shape[1])
    if edges > max_edges:
        raise DrawError(f"the graph has {edges} edges, more than a drawing stays readable with "
                        f"({max_edges}); use --summary to inspect large graphs")


def image_format(path: str | os.PathLike) -> str:
    """The image format named by ``path``'s extension (png when it has none).

    Raises :class:`DrawError` for an extension matplotlib cannot write."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if ext not in supported:
        raise DrawError(f"{os.fspath(path)}: cannot draw to a .{ext} file; use one of "
                        + ", ".join(f".{e}" for e in sorted(supported)))
    return ext


def node_positions(pg) -> torch.Tensor:
    """``[N, 2]`` float (x, y) per node: x from depth (auxiliary nodes shifted left), y the
    rank within the column, centred on 0 and ordered to reduce edge crossings (inputs by
    fixed position, other nodes by the mean height of their predecessors)."""
    x_feat, edge_index = pg.data.x, pg.data.edge_index
    n = int(pg.data.num_nodes)
    role = x_feat[:, schema.node_column("role")].long()
    depth = x_feat[:, schema.node_column("depth")].float()
    position = x_feat[:, schema.node_column("position")].float()
    main = (role == schema.code(schema.NODE_ROLES, "input")) | (role == schema.code(schema.NODE_ROLES, "neuron"))
    xs = depth - (~main).float() * _AUX_SHIFT
    ys = torch.zeros(n)
    columns = [torch.nonzero(xs == c).flatten() for c in torch.unique(xs)]  # ascending x
    src, dst = edge_index[0], edge_index[1]
    for column in columns:
        if column.numel() == 0:
            continue
        key = _barycentre(ys, src, dst, column, n)  # higher key: drawn higher
        pinned = position[column] >= 0
        key = torch.where(pinned, -position[column], key)  # position 0 on top
        # role first, so auxiliary nodes of one kind stay together; then the crossing key
        order = sorted(range(column.numel()), key=lambda i: (int(role[column[i]]), -float(key[i]), int(column[i])))
        ranks = torch.empty(column.numel())
        ranks[torch.tensor(order, dtype=torch.long)] = torch.arange(column.numel(), dtype=torch.float)
        ys[column] = (column.numel() - 1) / 2.0 - ranks
    return torch.stack([xs, ys], dim=1)


def _barycentre(ys: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, column: torch.Tensor,
                n: int) -> torch.Tensor:
    """Mean y of the already-placed predecessors of each node in ``column`` (0 if none)."""
    total = torch.zeros(n).index_add_(0, dst, ys[src])
    count = torch.zeros(n).index_add_(0, dst, torch.ones(dst.numel()))
    return total[column] / count[column].clamp(min=1)


_ROLE_COLOURS = {
    "input": "#7f7f7f", "neuron": "#1f77b4", "bias": "#ff7f0e", "norm_weight": "#2ca02c",
    "norm_bias": "#bcbd22", "running_mean": "#9467bd", "running_var": "#e377c2",
    "group": "#8c564b", "param_operand": "#17becf", "tie": "#000000", "head": "#d62728",
}


def _palette(count: int) -> list:
    """``count`` colours, all distinct up to 20 (Dark2, tab10, then tab20 with its dark
    shades first so that neighbours differ)."""
    from matplotlib import colormaps

    if count <= 8:
        return [colormaps["Dark2"](i) for i in range(count)]
    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [colormaps["tab20"](order[i % 20]) for i in range(count)]


def draw_graph(pg, path: str | os.PathLike, max_edges: int = DEFAULT_MAX_EDGES) -> None:
    """Draw ``pg`` (a :class:`~gmn_compiler.ParameterGraph`) to ``path``.

    The format follows the extension (png by default). The file is written atomically
    (temporary file in the same folder + rename), so a failure leaves no partial file.
    Raises :class:`DrawError` when the graph has more than ``max_edges`` edges.
    """
    check_drawable(pg, max_edges)
    fmt = image_format(path)
    figure, legends = _figure(pg)
    write_atomically(path, lambda tmp: figure.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight",
                                                      bbox_extra_artists=legends), suffix=f".{fmt}")


def _figure(pg):
    """The matplotlib Figure of the drawing (Agg canvas attached) and its legends."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos = node_positions(pg)
    n = int(pg.data.num_nodes)
    span_x = float(pos[:, 0].max() - pos[:, 0].min()) if n else 1.0
    span_y = float(pos[:, 1].max() - pos[:, 1].min()) if n else 1.0
    width = min(22.0, max(7.0, 1.6 * (span_x + 1) + 3.5))
    height = min(30.0, max(4.5, 0.22 * (span_y + 1) + 1.5))
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    edge_handles = _draw_edges(ax, pg, pos)
    node_handles = _draw_nodes(ax, pg, pos, n)
    return figure, _decorate(ax, pg, pos, node_handles, edge_handles)


def _draw_edges(ax, pg, pos: torch.Tensor) -> list:
    """One LineCollection per edge type present; returns legend handles."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    etype = pg.data.edge_attr[:, schema.edge_column("type")].long()
    present = torch.unique(etype).tolist()
    colours = dict(zip(present, _palette(len(present))))
    counts = {code: int((etype == code).sum()) for code in present}
    handles = []
    for code in present:
        mask = etype == code
        ei = pg.data.edge_index[:, mask]
        segments = torch.stack([pos[ei[0]], pos[ei[1]]], dim=1).numpy()
        z = 1.0 + 0.5 / (1 + counts[code])  # rarer types on top of the dense ones, and
        alpha = min(0.9, max(0.12, 0.9 * (40 / counts[code]) ** 0.5))  # drawn more opaque
        ax.add_collection(LineCollection(segments, colors=[colours[code]], linewidths=0.8,
                                         alpha=alpha, zorder=z))
        label = f"{pg.vocabulary.edge_types[code]} ({counts[code]})"
        handles.append(Line2D([], [], color=colours[code], linewidth=2.0, label=label))
    return handles


def _draw_nodes(ax, pg, pos: torch.Tensor, n: int) -> list:
    """Scatter the nodes coloured by role; pinned nodes get a black outline."""
    role = pg.data.x[:, schema.node_column("role")].long()
    pinned = pg.data.x[:, schema.node_column("position")] >= 0
    fallback = _palette(len(pg.vocabulary.node_roles))
    size = 60.0 if n < 60 else max(8.0, 60.0 * (60 / n) ** 0.5)
    handles = []
    for code in torch.unique(role).tolist():
        mask = role == code
        xy = pos[mask].numpy()
        edge = ["black" if p else "none" for p in pinned[mask].tolist()]
        name = pg.vocabulary.node_roles[code]
        handles.append(ax.scatter(xy[:, 0], xy[:, 1], s=size, color=_ROLE_COLOURS.get(name, fallback[code]),
                                  edgecolors=edge, linewidths=0.8, zorder=2,
                                  label=f"{name} ({int(mask.sum())})"))
    return handles


def _decorate(ax, pg, pos: torch.Tensor, node_handles: list, edge_handles: list) -> list:
    """Axes limits, depth ticks, title and the two legends (outside the plot, on the right;
    returned so that the saved image's bounding box includes them)."""
    depths = sorted({int(d) for d in pg.data.x[:, schema.node_column("depth")].tolist()})
    ax.set_xticks(depths)
    ax.set_xlabel("depth (auxiliary nodes drawn left of their column)")
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if pos.numel():
        ax.set_xlim(float(pos[:, 0].min()) - 0.3, float(pos[:, 0].max()) + 0.3)
        ax.set_ylim(float(pos[:, 1].min()) - 0.8, float(pos[:, 1].max()) + 0.8)
    ax.set_title(f"{int(pg.data.num_nodes)} nodes, {int(pg.data.edge_index.shape[1])} edges "
                 "(outlined: fixed-position input/output nodes)", fontsize=10)
    first = ax.legend(handles=node_handles, title="node role", loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=9, frameon=False)
    ax.add_artist(first)
    second = ax.legend(handles=edge_handles, title="edge type", loc="lower left",
              bbox_to_anchor=(1.01, 0.0), fontsize=8, title_fontsize=9, frameon=False)
    return [first, second]
