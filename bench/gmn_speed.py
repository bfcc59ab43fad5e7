"""Train-step speed and memory of the GMN against a straightforward edge-MLP GNN.

    python bench/gmn_speed.py                      # hidden 64 and 128, 4 blocks, ~100k edges
    python bench/gmn_speed.py --hidden 64 --steps 8 --edges 50000
    python bench/gmn_speed.py --device cuda        # on a GPU (memory: torch's peak allocation)

Both models compute the *same function* with the same parameters (checked in float64, values
and gradients, before timing): the reference differs only in how the block is written, the
textbook way: per edge ``cat([x[src], x[dst], e])`` by fancy indexing -> ``Linear(3d, d)`` ->
MLP, sums onto nodes with ``torch_geometric.utils.scatter``, plain autograd. Ours
(``gmn_models.layers.GMNBlock``) projects node states once per node before gathering them with
``index_select``, sums with ``index_add_``, and runs the edge half as one autograd function
that recomputes ``LN(e)`` and ``act(h)`` in the backward pass and reuses its buffers. Encoders
and readouts are shared.

A train step is forward + backward + Adam step on an MSE loss of the graph readout against
random targets, on one ``Batch`` of compiled small CNNs (random widths, activations, with or
without BatchNorm) totalling about ``--edges`` edges. Per hidden size:

- time: one fresh subprocess holds both models and alternates their steps, so a burst of load
  from other processes hits both; throughput is ``E / step time``, reported for the best and
  the median step; the pass/fail line uses best-of (least disturbed by load);
- memory: one fresh subprocess per model; after one step on a single small graph (which pages
  in code and lazily created state), the process's peak RSS over ``warmup + 1`` steps on the
  batch minus its RSS just before them (the kernel's peak mark is reset first through
  ``/proc/self/clear_refs``, so loading does not count; ``ru_maxrss`` where that is not
  available). This counts torch's CPU allocations, which ``tracemalloc`` does not see. With
  ``--device cuda`` the number is instead the growth of ``torch.cuda.max_memory_allocated``
  over the same steps (the batch and both models live on the GPU; steps are timed after
  ``torch.cuda.synchronize``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmn_models.layers import NONLINEARITIES, GMNBlock
from gmn_models.model import GMN

IMPLS = ("ours", "reference")


class ReferenceBlock(GMNBlock):
    """The same block as :class:`GMNBlock` (same parameters, same function), written the
    straightforward way: fancy-indexed gathers, an ``[E, 3d]`` concatenation through one
    ``Linear(3d, d)``, and PyG ``scatter`` sums."""

    def forward(self, x: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        from torch_geometric.utils import scatter

        src, dst = edge_index[0], edge_index[1]
        act = NONLINEARITIES[self.activation]
        xn = self.norm_x(x)
        cat = torch.cat([xn[src], xn[dst], self.norm_e(e)], dim=-1)
        weight = torch.cat([self.edge_src.weight, self.edge_dst.weight, self.edge_in.weight], dim=1)
        hidden = act(F.linear(cat, weight, self.edge_in.bias))
        m = self.edge_out(F.dropout(hidden, self.dropout, self.training))
        e = e + m
        agg_fwd = scatter(e, dst, dim=0, dim_size=x.shape[0], reduce="sum")
        agg_bwd = scatter(e, src, dim=0, dim_size=x.shape[0], reduce="sum")
        u = torch.cat([xn, self.norm_fwd(agg_fwd), self.norm_bwd(agg_bwd)], dim=-1)
        x = x + self.node_out(F.dropout(act(self.node_in(u)), self.dropout, self.training))
        return x, e


def build_model(impl: str, hidden: int, blocks: int) -> GMN:
    torch.manual_seed(0)
    model = GMN(hidden=hidden, num_blocks=blocks, graph_out=1)
    if impl == "reference":
        for block in model.blocks:
            block.__class__ = ReferenceBlock  # same parameters, naive forward
    elif impl != "ours":
        raise ValueError(impl)
    return model


def small_cnn(rng: torch.Generator) -> tuple[nn.Module, tuple[Tensor]]:
    """A small CIFAR-style CNN of random widths (the "Varying CNNs" flavour)."""
    widths = [int(w) for w in torch.tensor([8, 16, 24, 32])[torch.randint(0, 4, (3,), generator=rng)]]
    act = nn.ReLU if torch.rand(1, generator=rng).item() < 0.5 else nn.GELU
    norm = torch.rand(1, generator=rng).item() < 0.5
    layers: list[nn.Module] = []
    c_in = 3
    for w in widths:
        layers += [nn.Conv2d(c_in, w, 3, padding=1)] + ([nn.BatchNorm2d(w)] if norm else []) + [act()]
        c_in = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10)]
    return nn.Sequential(*layers).eval(), (torch.randn(1, 3, 8, 8),)


def make_graphs(total_edges: int, seed: int = 0) -> list:
    import gmn_compiler as gc

    rng = torch.Generator().manual_seed(seed)
    graphs, edges = [], 0
    while edges < total_edges:
        model, inputs = small_cnn(rng)
        data = gc.compile(model, inputs).data
        graphs.append(data)
        edges += data.edge_index.shape[1]
    return graphs


def _as_dicts(graphs: list) -> list[dict]:
    keys = ("x", "edge_index", "edge_attr", "edge_param", "edge_offset")
    return [{k: getattr(g, k) for k in keys} | {"num_nodes": torch.tensor(g.num_nodes)} for g in graphs]


def _load_batch(path: str, first: int | None = None):
    from torch_geometric.data import Batch, Data

    dicts = torch.load(path, weights_only=True)[:first]
    return Batch.from_data_list([Data(**{k: v for k, v in d.items() if k != "num_nodes"},
                                      num_nodes=int(d["num_nodes"])) for d in dicts])


def check_parity(blocks: int) -> float:
    """Max |ours - reference| over the graph readout and every parameter gradient, in float64,
    on a batch of two small graphs."""
    from torch_geometric.data import Batch

    batch = Batch.from_data_list(make_graphs(1, seed=1) + make_graphs(1, seed=2))
    models = [build_model("ours", 16, blocks).double(), build_model("reference", 16, blocks).double()]
    outs = []
    for model in models:
        out = model(batch)
        out.square().sum().backward()
        outs.append([out.detach()] + [p.grad for p in model.parameters()])
    return max(float((a - b).abs().max()) for a, b in zip(*outs))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def _reset_peak_rss() -> tuple[int, str]:
    """Reset the kernel's peak-RSS mark (``/proc/self/clear_refs`` <- 5, Linux >= 4.0) and
    return (current RSS KiB, method). Without it, fall back to ``ru_maxrss``, which may
    already hold an earlier, higher peak (loading) and then under-counts the growth."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS"), "VmHWM"
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def _peak_rss_kib() -> int:
    try:
        return _status_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """Reset the peak-memory mark of ``device`` and return (current MiB, method): process RSS
    on the CPU (:func:`_reset_peak_rss`), torch's allocated memory on a GPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    rss_kib, how = _reset_peak_rss()
    return rss_kib / 1024, how


def _peak_memory_mib(device: torch.device) -> float:
    """The peak since :func:`_reset_peak_memory_mib`, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _peak_rss_kib() / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(impl: str, hidden: int, blocks: int, device: torch.device) -> Callable[..., float]:
    """A closure running one timed train step (forward, MSE backward, Adam step) on a batch
    already on ``device``."""
    model = build_model(impl, hidden, blocks).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch) -> float:
        target = torch.randn(batch.num_graphs, 1, generator=torch.Generator().manual_seed(0)).to(device)
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(batch), target).backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - t0

    return step


def worker(args: argparse.Namespace) -> None:
    """``--worker memory:IMPL``: peak RSS growth over ``warmup + 1`` steps of one model in this
    fresh process. ``--worker time``: both models in this process, steps alternating (so a
    burst of load hits both), ``warmup`` untimed steps each first."""
    device = torch.device(args.device)
    batch = _load_batch(args.graphs).to(device)
    result = {"hidden": args.hidden, "edges": batch.edge_index.shape[1], "graphs": batch.num_graphs,
              "threads": torch.get_num_threads()}
    if args.worker.startswith("memory:"):
        impl = args.worker.split(":", 1)[1]
        step = _trainer(impl, args.hidden, args.blocks, device)
        step(_load_batch(args.graphs, first=1).to(device))  # page in code and lazy state on one small graph
        before, how = _reset_peak_memory_mib(device)
        for _ in range(args.warmup + 1):
            step(batch)
        result |= {"impl": impl, "peak_rss_delta_mib": _peak_memory_mib(device) - before,
                   "rss_before_mib": before, "how": how}
    else:
        steps = {impl: _trainer(impl, args.hidden, args.blocks, device) for impl in IMPLS}
        for _ in range(args.warmup):
            for step in steps.values():
                step(batch)
        times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for _ in range(args.steps):
            for impl, step in steps.items():
                times[impl].append(step(batch))
        result["times"] = times
    print(json.dumps(result))


def _run_worker(mode: str, hidden: int, path: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--hidden", str(hidden),
           "--blocks", str(args.blocks), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--graphs", path, "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 128])
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--edges", type=int, default=100_000, help="approximate total edges in the batch")
    p.add_argument("--steps", type=int, default=5, help="timed train steps per model")
    p.add_argument("--warmup", type=int, default=1, help="untimed train steps per model first")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N when a GPU is present")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--graphs", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.hidden = args.hidden[0]
        worker(args)
        return 0

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: this torch build sees no CUDA GPU; run with --device cpu",
              file=sys.stderr)
        return 2
    diff = check_parity(args.blocks)
    print(f"parity (float64, ours vs reference, graph readout and all gradients): max |diff| = {diff:.1e}",
          file=sys.stderr)
    if diff > 1e-9:
        print("reference and ours disagree: the comparison would be meaningless", file=sys.stderr)
        return 1
    graphs = make_graphs(args.edges)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "graphs.pt")
        torch.save(_as_dicts(graphs), path)
        for hidden in args.hidden:
            print(f"hidden {hidden}: timing (alternating steps) ...", file=sys.stderr)
            timed = _run_worker("time", hidden, path, args)
            mem = {}
            for impl in IMPLS:
                print(f"hidden {hidden}: peak memory of {impl} ...", file=sys.stderr)
                mem[impl] = _run_worker(f"memory:{impl}", hidden, path, args)["peak_rss_delta_mib"]
            rows.append((hidden, timed, mem))
    edges = rows[0][1]["edges"]
    print(f"batch: {rows[0][1]['graphs']} small CNN graphs, {edges} edges; {args.blocks} blocks; "
          f"{args.steps} timed steps per model after {args.warmup} warm-up, alternating; "
          f"torch threads {rows[0][1]['threads']}; device {args.device}")
    print("| model | hidden | best step s | median step s | edges/s (best) | edges/s (median) "
          "| peak RSS growth MiB |")
    print("|---|---|---|---|---|---|---|")
    for hidden, timed, mem in rows:
        for impl in IMPLS:
            t = timed["times"][impl]
            print(f"| {impl} | {hidden} | {min(t):.3f} | {statistics.median(t):.3f} | {edges / min(t):,.0f} "
                  f"| {edges / statistics.median(t):,.0f} | {mem[impl]:.0f} |")
    print("official metanet (github.com/cptq/graph_metanetworks): column skipped — its code is not on any "
          "package index and not present on this machine, so it is not measured here")
    for hidden, timed, mem in rows:
        ours, ref = timed["times"]["ours"], timed["times"]["reference"]
        best, median = min(ref) / min(ours), statistics.median(ref) / statistics.median(ours)
        ratio_mem = mem["ours"] / max(mem["reference"], 1e-9)
        print(f"hidden {hidden}: throughput ours/reference = {best:.2f}x best-of, {median:.2f}x median "
              f"(target >= 2x: {'PASS' if best >= 2 else 'FAIL'}); memory ours/reference = {ratio_mem:.2f}x "
              f"(target <= 0.7x: {'PASS' if ratio_mem <= 0.7 else 'FAIL'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
