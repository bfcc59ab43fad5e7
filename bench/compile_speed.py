"""Compile-speed benchmark: lowering time as a ratio to a memory-bound floor.

    python bench/compile_speed.py                      # ResNet-50 shape, best of 3
    python bench/compile_speed.py --model resnet18 --repeat 5
    python bench/compile_speed.py --profile 25         # + cProfile of one lowering, top 25

The model is built here (no torchvision, no downloads): a standard ResNet with BatchNorm and
1000 classes; ``resnet50`` is Bottleneck blocks [3, 4, 6, 3], expansion 4, 25,557,032
parameters. Weights are random: only the shapes matter for speed.

What is timed (each best of ``--repeat`` runs after one warm-up, all in this process):

- trace: ``gmn_compiler.to_ir(model, inputs)`` — torch.export plus the conversion to IR;
- lowering: ``gmn_compiler.lowering.lower(ir, registry)`` plus building the PyG ``Data``,
  i.e. everything ``gmn_compiler.compile`` does after the IR;
- floor = flatten + edge index, the least any compiler must do for one edge per parameter:
  - flatten: ``torch.cat([p.reshape(-1) for p in model.parameters()])``;
  - edge index: allocate a ``LongTensor [2, total_params]`` and fill it, one broadcast
    ``copy_`` of (source ids, target ids) per parameter block (the same scheme as
    ``GraphBuilder``, minus every other column).

The verdict compares lowering with the target ``lowering <= 5 x floor`` (DESIGN.md section 7).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import resource
import sys
import time

import torch
from torch import nn
from torch_geometric.data import Data

import gmn_compiler
from gmn_compiler.lowering import lower
from gmn_compiler.registry import default_registry

TARGET_RATIO = 5.0


# ---------------------------------------------------------------------------- models
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers: list[int], num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


MODELS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def build_model(name: str) -> nn.Module:
    block, layers = MODELS[name]
    torch.manual_seed(0)
    return ResNet(block, layers).eval()


# ---------------------------------------------------------------------------- timing
def best_of(fn, repeat: int, warmup: int = 1) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls after ``warmup`` untimed ones; returns the last
    result. Each result is dropped before the next call, so runs do not stack up memory."""
    result = None
    for _ in range(warmup):
        result = fn()
        del result
        gc.collect()
    best = float("inf")
    result = None
    for i in range(repeat):
        result = None
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def flatten_floor(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params])


def edge_index_floor(params: list[torch.Tensor], total: int) -> torch.Tensor:
    """One broadcast copy of (src ids, dst ids) per parameter block into preallocated
    ``[2, total]`` storage: an edge ``in -> out`` per weight ``W[out, in, ...]``, an edge
    ``aux -> channel`` per 1-D parameter (bias, BN affine)."""
    edge_index = torch.empty((2, total), dtype=torch.long)
    start = node = 0
    for p in params:
        grid = tuple(p.shape)
        end = start + p.numel()
        if p.dim() >= 2:
            out, inp = grid[0], grid[1]
            tail = (1,) * (p.dim() - 2)
            src = torch.arange(node, node + inp).view((1, inp) + tail)
            dst = torch.arange(node + inp, node + inp + out).view((out, 1) + tail)
            node += inp + out
        else:
            src = torch.tensor([node])
            dst = torch.arange(node + 1, node + 1 + grid[0])
            node += 1 + grid[0]
        edge_index[0, start:end].view(grid).copy_(src.expand(grid))
        edge_index[1, start:end].view(grid).copy_(dst.expand(grid))
        start = end
    return edge_index


def lower_to_data(ir, registry) -> Data:
    """What ``gmn_compiler.compile`` does after the IR: lower, then wrap in PyG ``Data``."""
    built, _ctx = lower(ir, registry)
    return Data(x=built.x, edge_index=built.edge_index, edge_attr=built.edge_attr,
                edge_param=built.edge_param, edge_offset=built.edge_offset,
                num_nodes=built.num_nodes)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--trace-repeat", type=int, default=None,
                        help="timed tracing runs (default: --repeat); tracing takes seconds")
    parser.add_argument("--input-size", type=int, default=224, help="H = W of the example input")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, cProfile one lowering and print the top N functions")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    trace_repeat = args.repeat if args.trace_repeat is None else args.trace_repeat

    registry = default_registry()
    model = build_model(args.model)
    inputs = (torch.randn(1, 3, args.input_size, args.input_size),)
    params = [p.detach() for p in model.parameters()]
    total = sum(p.numel() for p in params)
    rss_start = peak_rss_mib()

    # The floor first, on an otherwise idle heap.
    t_flat, flat = best_of(lambda: flatten_floor(params), args.repeat)
    assert flat.numel() == total
    del flat
    t_index, index = best_of(lambda: edge_index_floor(params, total), args.repeat)
    del index
    gc.collect()
    t_floor = t_flat + t_index
    rss_floor = peak_rss_mib()

    t_trace, ir = best_of(lambda: gmn_compiler.to_ir(model, inputs, registry=registry),
                          trace_repeat, warmup=0 if trace_repeat > 1 else 0)
    rss_trace = peak_rss_mib()

    t_lower, data = best_of(lambda: lower_to_data(ir, registry), args.repeat)
    rss_lower = peak_rss_mib()
    nodes, edges = int(data.num_nodes), int(data.edge_index.shape[1])
    param_edges = int((data.edge_param >= 0).sum())
    del data
    gc.collect()

    ratio = t_lower / t_floor
    print(f"model           {args.model}  input (1, 3, {args.input_size}, {args.input_size})  "
          f"torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"python {platform.python_version()}  {datetime.date.today()}")
    print(f"params          {total:,}  ({len(params)} tensors)")
    print(f"graph           {nodes:,} nodes, {edges:,} edges "
          f"({param_edges:,} carry parameters/buffers, {len(ir.ops)} IR ops)")
    print(f"runs            best of {args.repeat} after 1 warm-up (trace: best of {trace_repeat})")
    print(f"trace s         {t_trace:8.3f}   to_ir: torch.export + IR conversion")
    print(f"lowering s      {t_lower:8.3f}   lower() + PyG Data")
    print(f"floor s         {t_floor:8.3f}   = flatten {t_flat:.3f} + edge index {t_index:.3f}")
    print(f"ratio           {ratio:8.2f}   lowering / floor")
    print(f"peak RSS MiB    {rss_lower:8.0f}   (start {rss_start:.0f}, after floor {rss_floor:.0f}, "
          f"after trace {rss_trace:.0f})")
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"verdict         {verdict}: lowering is {ratio:.2f}x the floor "
          f"(target <= {TARGET_RATIO:g}x)")

    if args.profile:
        import cProfile
        import pstats
        gc.collect()
        profiler = cProfile.Profile()
        profiler.enable()
        data = lower_to_data(ir, registry)
        profiler.disable()
        del data
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.profile)
        stats.sort_stats("cumulative").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
