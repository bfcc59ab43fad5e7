"""Fuzz programs: a JSON-able spec of a small network and the ``nn.Module`` that runs it.

A :class:`Program` is a list of :class:`Step` s over named activations. Each step names an op
of :data:`OPS`, its input activations, its output names and its arguments (plain JSON
values). :class:`ProgramModule` interprets a program: it creates each step's parameters from
the spec (sizes are read off the activations as they flow, so a spec never repeats an input
width) and runs the steps in order. Constants (per-channel vectors, sinusoids along tokens,
masks) are given by small recipes, not by their values, so that a spec stays valid when a
shrinker narrows a width.

``Program.from_json(p.to_json())`` rebuilds the same program exactly; the module's
parameter *values* come from the global torch RNG, but every oracle randomizes them anyway
(:func:`gmn_compiler.testing.randomized`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- the spec


@dataclass
class Step:
    """``outs = op(*ins, **args)``."""

    op: str
    ins: list[str]
    outs: list[str]
    args: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        lhs = ", ".join(self.outs)
        return f"{lhs} = {self.op}({', '.join(self.ins)}{', ' if args and self.ins else ''}{args})"


@dataclass
class Program:
    """Inputs (``{"name", "shape", "dtype": "float" | "long", "vocab"?}``), steps, the
    names returned, and ``families``: the grammar blocks it was drawn from (a label only)."""

    inputs: list[dict[str, Any]]
    steps: list[Step]
    outputs: list[str]
    families: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Program":
        return cls([dict(i) for i in d["inputs"]], [Step(**s) for s in d["steps"]],
                   list(d["outputs"]), list(d.get("families", [])))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "Program":
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """Code-like text: one line per input and step."""
        lines = [f"{i['name']}: {i['dtype']}{list(i['shape'])}" + (f" < {i['vocab']}" if "vocab" in i else "")
                 for i in self.inputs]
        lines += [s.describe() for s in self.steps]
        lines.append(f"return {', '.join(self.outputs)}")
        return "\n".join(lines)

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for i in self.inputs:
            if i["dtype"] == "long":
                out.append(torch.randint(0, int(i["vocab"]), tuple(i["shape"]), generator=g))
            else:
                out.append(torch.randn(tuple(i["shape"]), generator=g))
        return tuple(out)


def pruned(program: Program) -> Program:
    """``program`` without the steps whose outputs are never used and the inputs no step
    reads (a copy)."""
    used, steps = set(program.outputs), []
    for step in reversed(program.steps):
        if used.intersection(step.outs):
            used.update(step.ins)
            steps.append(step)
    inputs = [dict(i) for i in program.inputs if i["name"] in used]
    return Program(inputs, steps[::-1], list(program.outputs), list(program.families))


# ----------------------------------------------------------------------------- constants


def const_values(recipe: dict[str, Any], shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """The constant a recipe gives for an operand of ``shape``: ``{"kind": "vector", "axis",
    "seed"}`` (nonzero multiples of 1/2 along one axis), ``{"kind": "wave", "axis", "fn":
    "sin" | "cos", "freq", "phase"}`` (``fn(freq * i + phase)`` along one axis). The result
    broadcasts against the operand (size 1 on every other axis)."""
    axis = recipe["axis"] % len(shape)
    n = shape[axis]
    if recipe["kind"] == "vector":
        g = torch.Generator().manual_seed(int(recipe["seed"]))
        mag = torch.randint(1, 5, (n,), generator=g).to(dtype) / 2
        sign = torch.randint(0, 2, (n,), generator=g).to(dtype) * 2 - 1
        values = mag * sign
    elif recipe["kind"] == "wave":
        t = torch.arange(n, dtype=dtype) * float(recipe["freq"]) + float(recipe["phase"])
        values = torch.sin(t) if recipe["fn"] == "sin" else torch.cos(t)
    else:
        raise ValueError(f"unknown constant recipe {recipe['kind']!r}")
    view = [1] * (len(shape) - axis)
    view[0] = n
    return values.view(view)


def mask_values(kind: str, diag: int, rows: int, cols: int) -> torch.Tensor:
    """Boolean ``[rows, cols]``: True where a causal (``j <= i + diag``) or anti-causal
    (``j >= i - diag``) mask keeps the entry."""
    ones = torch.ones(rows, cols, dtype=torch.bool)
    return ones.tril(diag) if kind == "causal" else ones.triu(-diag)


class Const(nn.Module):
    """Holds a constant tensor: ``holder`` "buffer" (a non-persistent buffer), "attr" (a
    plain tensor attribute: torch.export lifts it as a constant) or "inline" (made in
    ``forward``)."""

    def __init__(self, make: Callable[[], torch.Tensor], holder: str):
        super().__init__()
        self.make, self.holder = make, holder
        if holder == "buffer":
            self.register_buffer("value", make(), persistent=False)
        elif holder == "attr":
            self.value = make()

    def forward(self) -> torch.Tensor:
        return self.make() if self.holder == "inline" else self.value


# ----------------------------------------------------------------------------- ops
# OPS[name] = (build(args, input shapes) -> nn.Module | None, run(module, inputs, args))
OPS: dict[str, tuple[Callable | None, Callable]] = {}


def op(name: str, build: Callable | None = None):
    def register(run):
        OPS[name] = (build, run)
        return run
    return register


def _conv_build(a, s):
    cls = {3: nn.Conv1d, 4: nn.Conv2d}[len(s[0])]
    return cls(s[0][1], a["out"], a["k"], stride=a.get("stride", 1), padding=a.get("padding", 0),
               dilation=a.get("dilation", 1), groups=a.get("groups", 1), bias=a.get("bias", True))


def _bn_build(a, s):
    cls = nn.BatchNorm2d if len(s[0]) == 4 else nn.BatchNorm1d
    return cls(s[0][1], eps=a.get("eps", 1e-5), affine=a.get("affine", True))


def _ln_build(a, s):
    return nn.LayerNorm(tuple(s[0][-a.get("dims", 1):]), eps=a.get("eps", 1e-5),
                        elementwise_affine=a.get("affine", True), bias=a.get("bias", True))


def _rms_build(a, s):
    return nn.RMSNorm(tuple(s[0][-a.get("dims", 1):]), eps=a.get("eps"), elementwise_affine=a.get("affine", True))


def _mha_build(a, s):
    return nn.MultiheadAttention(s[0][-1], a["heads"], batch_first=True, bias=a.get("bias", True))


op("linear", lambda a, s: nn.Linear(s[0][-1], a["out"], bias=a.get("bias", True)))(lambda m, x, a: m(x[0]))
op("conv", _conv_build)(lambda m, x, a: m(x[0]))
op("batchnorm", _bn_build)(lambda m, x, a: m(x[0]))
op("layernorm", _ln_build)(lambda m, x, a: m(x[0]))
op("rmsnorm", _rms_build)(lambda m, x, a: m(x[0]))
op("groupnorm", lambda a, s: nn.GroupNorm(a["groups"], s[0][1], eps=a.get("eps", 1e-5),
                                          affine=a.get("affine", True)))(lambda m, x, a: m(x[0]))
op("embedding", lambda a, s: nn.Embedding(a["vocab"], a["dim"]))(lambda m, x, a: m(x[0]))

_ACTS: dict[str, Callable] = {
    "relu": lambda x, a: F.relu(x),
    "gelu": lambda x, a: F.gelu(x, approximate=a.get("approximate", "none")),
    "tanh": lambda x, a: torch.tanh(x),
    "sigmoid": lambda x, a: torch.sigmoid(x),
    "silu": lambda x, a: F.silu(x),
    "leaky_relu": lambda x, a: F.leaky_relu(x, a.get("slope", 0.01)),
    "elu": lambda x, a: F.elu(x, a.get("alpha", 1.0)),
    "hardtanh": lambda x, a: F.hardtanh(x, a.get("lo", -1.0), a.get("hi", 1.0)),
    "clamp": lambda x, a: x.clamp(a.get("lo"), a.get("hi")),
}
ACTIVATIONS = tuple(_ACTS)


@op("act")
def _act(m, x, a):
    return _ACTS[a["fn"]](x[0], a)


@op("softmax")
def _softmax(m, x, a):
    return torch.softmax(x[0], a["axis"])


@op("select")
def _select(m, x, a):
    return x[0].select(a["axis"], a["index"])


@op("slice")
def _slice(m, x, a):
    t = x[0]
    index = (slice(None),) * (a["axis"] % t.dim()) + (slice(a.get("start"), a.get("end"), a.get("step", 1)),)
    return t[index]


op("flip")(lambda m, x, a: torch.flip(x[0], a["axes"]))
op("roll")(lambda m, x, a: torch.roll(x[0], a["shift"], a["axis"]))
op("transpose")(lambda m, x, a: x[0].transpose(a["a"], a["b"]))
op("permute")(lambda m, x, a: x[0].permute(*a["dims"]))
op("flatten")(lambda m, x, a: x[0].flatten(a["start"], a["end"]))
op("unflatten")(lambda m, x, a: x[0].unflatten(a["axis"], tuple(a["sizes"])))
op("unsqueeze")(lambda m, x, a: x[0].unsqueeze(a["axis"]))
op("cat")(lambda m, x, a: torch.cat(list(x), a["axis"]))
op("split")(lambda m, x, a: list(torch.split(x[0], a["sizes"], a["axis"])))
op("chunk")(lambda m, x, a: list(torch.chunk(x[0], a["chunks"], a["axis"])))
op("add")(lambda m, x, a: x[0] + x[1])
op("mul")(lambda m, x, a: x[0] * x[1])
op("gate")(lambda m, x, a: x[0] * torch.sigmoid(x[1]))


def _const_build(a, s):
    if "recipe" not in a:
        return None
    shape, recipe, holder = tuple(s[0]), a["recipe"], a.get("holder", "buffer")
    if holder == "inline" and recipe["kind"] == "vector":  # a literal made in forward
        t = const_values(recipe, shape)
        data, view = t.flatten().tolist(), tuple(t.shape)
        return Const(lambda: torch.tensor(data).view(view), holder)
    return Const(lambda: const_values(recipe, shape), holder)


@op("const", _const_build)
def _const(m, x, a):
    c = a["value"] if m is None else m().to(x[0].dtype)
    return x[0] * c if a["mode"] == "mul" else x[0] + c


def _mask_build(a, s):
    """A boolean mask over ``axes`` (two axes; default the last two), broadcastable."""
    rank = len(s[0])
    i, j = (ax % rank for ax in a.get("axes", (-2, -1)))
    view = [1] * (rank - i)
    view[0], view[j - i] = s[0][i], s[0][j]
    rows, cols = s[0][i], s[0][j]
    return Const(lambda: mask_values(a["kind"], a.get("diag", 0), rows, cols).view(view), a.get("holder", "buffer"))


@op("mask", _mask_build)
def _mask(m, x, a):
    keep = m()
    if a.get("how", "masked_fill") == "masked_fill":
        return x[0].masked_fill(~keep, a["fill"])
    return torch.where(keep, x[0], x[1] if len(x) > 1 else a["fill"])


@op("reduce")
def _reduce(m, x, a):
    fn = {"mean": torch.mean, "sum": torch.sum, "amax": torch.amax}[a["fn"]]
    return fn(x[0], dim=a["axes"], keepdim=a.get("keepdim", False))


@op("pool")
def _pool(m, x, a):
    t = x[0]
    kind = ("max" if a["kind"] == "max" else "avg") + ("_pool1d" if t.dim() == 3 else "_pool2d")
    return getattr(F, kind)(t, a["k"], a.get("stride") or a["k"], a.get("padding", 0))


@op("pad")
def _pad(m, x, a):
    """``F.pad`` of the spatial axes: ``pads`` as F.pad lists them (last axis first)."""
    mode = a.get("mode", "constant")
    return F.pad(x[0], a["pads"], mode=mode, value=a.get("value", 0.0) if mode == "constant" else None)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, e = t.shape
    return t.reshape(b, n, heads, e // heads).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


@op("sdpa")
def _sdpa(m, x, a):
    q, k, v = (_heads(t, a["heads"]) for t in x)
    return _merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=a.get("causal", False)))


def _attn_build(a, s):
    if not a.get("causal"):
        return None
    n_q, n_k = s[0][1], s[1][1]
    return Const(lambda: mask_values("causal", 0, n_q, n_k), a.get("holder", "inline"))


@op("attention", _attn_build)
def _attention(m, x, a):
    """Hand-written multi-head attention: ``softmax(q k^T * scale) v`` via reshape/permute."""
    q, k, v = (_heads(t, a["heads"]) for t in x)
    scores = q @ k.transpose(-2, -1) * (a.get("scale") or 1 / math.sqrt(q.shape[-1]))
    if m is not None:
        scores = scores.masked_fill(~m(), float("-inf"))
    return _merge_heads(torch.softmax(scores, -1) @ v)


class MHA(nn.Module):
    def __init__(self, a, s):
        super().__init__()
        self.attn = _mha_build(a, s)
        self.mask = Const(lambda: ~mask_values("causal", 0, s[0][1], s[-1][1]), "inline") if a.get("causal") else None

    def forward(self, x):
        mask = self.mask() if self.mask is not None else None
        return self.attn(x[0], x[-1], x[-1], need_weights=False, attn_mask=mask)[0]


op("mha", MHA)(lambda m, x, a: m(x))

# ----------------------------------------------------------------------------- the module


def apply_op(name: str, args: dict[str, Any], xs: list[torch.Tensor]) -> tuple[nn.Module | None, list[torch.Tensor]]:
    """Build op ``name`` for inputs ``xs`` and run it: ``(module or None, outputs)``."""
    build, run = OPS[name]
    module = build(args, [tuple(t.shape) for t in xs]) if build is not None else None
    out = run(module, xs, args)
    return module, list(out) if isinstance(out, (list, tuple)) else [out]


def _run_step(step: Step, module: nn.Module | None, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    out = OPS[step.op][1](module, xs, step.args)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if len(outs) != len(step.outs):
        raise ValueError(f"{step.op} gave {len(outs)} outputs, the spec names {len(step.outs)}")
    return outs


def build_step(step: Step, xs: list[torch.Tensor]) -> tuple[nn.Module | None, list[torch.Tensor]]:
    """The step's module (or ``None``) and its outputs on ``xs``; raises if the step does not
    fit its inputs."""
    module, outs = apply_op(step.op, step.args, xs)
    if len(outs) != len(step.outs):
        raise ValueError(f"{step.op} gave {len(outs)} outputs, the spec names {len(step.outs)}")
    return module, outs


class ProgramModule(nn.Module):
    """Runs a :class:`Program`; the parameters of step ``i`` live under ``s{i}``."""

    def __init__(self, program: Program):
        super().__init__()
        self.program = program
        env = dict(zip((i["name"] for i in program.inputs), program.example_inputs()))
        with torch.no_grad():
            for i, step in enumerate(program.steps):
                module, outs = build_step(step, [env[n] for n in step.ins])
                if module is not None:
                    self.add_module(f"s{i}", module)
                env.update(zip(step.outs, outs))
        missing = [n for n in program.outputs if n not in env]
        if missing:
            raise ValueError(f"program outputs {missing} are never computed")

    def forward(self, *inputs: torch.Tensor):
        env = dict(zip((i["name"] for i in self.program.inputs), inputs))
        for i, step in enumerate(self.program.steps):
            env.update(zip(step.outs, _run_step(step, getattr(self, f"s{i}", None), [env[n] for n in step.ins])))
        outs = [env[n] for n in self.program.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)


def build(program: Program) -> tuple[ProgramModule, tuple[torch.Tensor, ...]]:
    """The module (eval mode) and example inputs of ``program``."""
    return ProgramModule(program).eval(), program.example_inputs()
