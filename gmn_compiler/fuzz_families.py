"""The families of the fuzz grammar (:data:`FAMILIES`) and the parallel-branch blocks.

A ``pair_*`` block builds two branches with parameters of their own that apply the same op
differing in exactly one attribute, then merges them (:meth:`Draft.merge`): where a compiler
rule forgets the attribute, the branches look alike in the graph and an automorphism swaps
their weights. ``pair_X`` puts each branch's parameters after the op (the op reads a shared
input), ``pair_X_pre`` before it (the op reads the branch's own linear map).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

from .fuzz_blocks import (EPS, _divisors, _feat_after_removing, _two, act_args, attention_branch, b_act,
                          b_attention, b_catsplit, b_const, b_const_tokens, b_const_vector, b_conv, b_embed,
                          b_gate, b_linear, b_mask, b_mask_features, b_norm, b_pool, b_reduce, b_residual,
                          b_softmax, b_view, const_args, mask_args)
from .fuzz_draft import _SAME, Draft, Reject
from .fuzz_program import ACTIVATIONS

def pair(d: Draft, h: str, op: str, args_a: dict | None, args_b: dict | None, *, where: str = "pre",
         feat: Any = _SAME) -> str:
    """Two branches ``op(h, **args_a)``, ``op(h, **args_b)`` (``None`` args: no op), merged.
    Each branch has parameters of its own: a linear (or 1x1 conv) before the op
    (``where="pre"``), after it (``"post"``), or none besides the op's own (``"none"``)."""
    w = d.width()
    branches = []
    for args in (args_a, args_b):
        x = d.linear(h, w) if where == "pre" else h
        y = x if args is None else d.add(op, [x], feat=feat, **args)
        branches.append(d.linear(y, w) if where == "post" else y)
    return d.merge(*branches)


def _vary(d: Draft, base: dict[str, Any], options: dict[str, list]) -> tuple[dict, dict]:
    """Two copies of ``base`` differing in one key of ``options`` (two of its values)."""
    key = d.pick(k for k, v in options.items() if len(v) >= 2)
    va, vb = _two(d, options[key])
    return {**base, key: va}, {**base, key: vb}


def p_act(d: Draft, h: str, where: str) -> str:
    a = act_args(d)
    options = {"leaky_relu": {"slope": [0.01, 0.1, 0.2, 0.5]}, "elu": {"alpha": [0.5, 1.0, 2.0]},
               "hardtanh": {"lo": [-1.0, -0.5, 0.0], "hi": [0.5, 1.0, 2.0]},
               "clamp": {"lo": [None, -0.5, 0.0], "hi": [None, 0.5, 1.0]},
               "gelu": {"approximate": ["none", "tanh"]}}.get(a["fn"], {"fn": list(ACTIVATIONS)})
    return pair(d, h, "act", *_vary(d, a, options), where=where)


def p_softmax(d: Draft, h: str, where: str) -> str:
    return pair(d, h, "softmax", *_vary(d, {}, {"axis": list(range(1, d.rank(h)))}), where=where)


def p_view(d: Draft, h: str, where: str) -> str:
    free = d.free_axes(h)
    ax = d.pick(free)
    n = d.shape(h)[ax]
    what = d.pick(["select", "slice", "flip", "roll", "transpose"])
    if what == "select":
        return pair(d, h, "select", *_vary(d, {"axis": ax}, {"index": list(range(n))}), where=where,
                    feat=_feat_after_removing(d.feat[h], ax))
    if what == "slice":
        return pair(d, h, "slice", *_vary(d, {"axis": ax, "start": 0, "end": n, "step": 1},
                                          {"start": [0, 1], "end": [n - 1, n], "step": [1, 2]}), where=where)
    if what == "flip":
        axes = [[a] for a in free] + [None]
        fa, fb = _two(d, range(len(axes)))
        return pair(d, h, "flip", *(None if axes[i] is None else {"axes": axes[i]} for i in (fa, fb)), where=where)
    if what == "roll":
        sa, sb = _two(d, range(n))
        return pair(d, h, "roll", *(None if s == 0 else {"shift": s, "axis": ax} for s in (sa, sb)), where=where)
    a, b = d.pick((a, b) for a in free for b in free if a < b and d.shape(h)[a] == d.shape(h)[b])
    return pair(d, h, "transpose", {"a": a, "b": b}, None, where=where)


def p_pool(d: Draft, h: str, where: str) -> str:
    base = {"kind": d.pick(["max", "avg"]), "k": d.pick([2, 3]), "stride": d.pick([1, 2]),
            "padding": d.rng.randint(0, 1)}
    options = {"kind": ["max", "avg"], "k": [2, 3], "stride": [1, 2], "padding": [0, 1]}
    return pair(d, d.to_channels(h), "pool", *_vary(d, base, options), where=where)


def p_pad(d: Draft, h: str, where: str) -> str:
    """Two paddings of the spatial axes with equal totals, differing in mode, side or value."""
    c = d.to_channels(h)
    spatial = d.rank(c) - 2
    totals = [d.pick([1, 2]) for _ in range(spatial)]
    base = {"pads": [v for t in totals for v in (t, 0)], "mode": d.pick(["constant", "reflect", "replicate", "circular"]),
            "value": 0.0}
    sides = [[v for t in totals for v in (t - k, k)] for k in (0, 1)]
    options = {"mode": ["constant", "reflect", "replicate", "circular"], "pads": sides, "value": [0.0, 1.0]}
    a, b = _vary(d, base, options)
    return pair(d, c, "pad", a, b, where=where)


def p_reduce(d: Draft, h: str, where: str) -> str:
    free = d.free_axes(h)
    keep, fn = d.chance(0.5), d.pick(["mean", "sum", "amax"])
    if len(free) >= 2 and d.chance(0.5):
        keep = True  # the branches keep the same rank, so that they merge
        args = [{"fn": fn, "axes": [a], "keepdim": keep} for a in _two(d, free)]
    else:
        args = list(_vary(d, {"axes": [d.pick(free)], "keepdim": keep}, {"fn": ["mean", "sum", "amax"]}))
    f = d.feat[h]
    nf = f if keep or f is None else f - (args[0]["axes"][0] < f)
    return pair(d, h, "reduce", *args, feat=nf, where=where)


def p_reduce_features(d: Draft, h: str, where: str) -> str:
    f = d.feat[h]
    if f is None:
        raise Reject("no features")
    keep = d.chance(0.5) or where == "post"
    args = _vary(d, {"axes": [f], "keepdim": keep}, {"fn": ["mean", "sum", "amax"]})
    r = pair(d, h, "reduce", *args, feat=f if where == "post" else None, where=where)
    if keep and where == "pre" and d.chance(0.6):  # rescale h by the statistic (a hand-written norm)
        return d.add("mul", [h, r], feat=f)
    return r


def p_mask(d: Draft, h: str, where: str) -> str:
    base = mask_args(d, h)
    options = {"kind": ["causal", "anti"], "diag": [-1, 0, 1], "fill": [0.0, -1.0, 1.0]}
    return pair(d, h, "mask", *_vary(d, base, options), where=where)


def p_const(d: Draft, h: str, where: str) -> str:
    base = const_args(d, h, "scalar")
    return pair(d, h, "const", *_vary(d, base, {"value": [0.5, 2.0, -1.0, 3.0], "mode": ["mul", "add"]}), where=where)


def p_const_vector(d: Draft, h: str, where: str) -> str:
    base = const_args(d, h, "feature")
    ra = base["recipe"]
    return pair(d, h, "const", base, {**base, "recipe": {**ra, "seed": ra["seed"] + 1}}, where=where)


def p_const_tokens(d: Draft, h: str, where: str) -> str:
    base = const_args(d, h, "free")
    ra, rb = _vary(d, base["recipe"], {"fn": ["sin", "cos"], "freq": [1.0, 0.5], "phase": [0.0, 1.0]})
    return pair(d, h, "const", {**base, "recipe": ra}, {**base, "recipe": rb}, where=where)


def p_layernorm(d: Draft, h: str) -> str:
    x = d.to_features_last(h)
    affine = d.chance(0.7)
    base = {"dims": 1, "eps": 1e-5, "affine": affine, "bias": True}
    options = {"dims": [1, 2] if d.rank(x) >= 3 else [1], "eps": list(EPS)}
    return pair(d, x, "layernorm", *_vary(d, base, options), where=d.pick(["pre", "post"] + ["none"] * affine))


def p_norm(d: Draft, h: str) -> str:
    which = d.pick(["groupnorm", "batchnorm", "rmsnorm"])
    affine = d.chance(0.7)
    where = d.pick(["pre", "post"] + ["none"] * affine)
    if which == "rmsnorm":
        x = d.to_features_last(h)
        base = {"dims": 1, "eps": 1e-5, "affine": affine}
        options = {"dims": [1, 2] if d.rank(x) >= 3 else [1], "eps": list(EPS)}
    else:
        x = d.to_channels(h) if d.kind(h) != "vec" else h
        base, options = {"eps": 1e-5, "affine": affine}, {"eps": list(EPS)}
        if which == "groupnorm":
            c = d.pick([2, 4, 6])
            x = d.linear(x, c)
            where = "post" if where == "pre" else where  # the groups need c channels
            base["groups"], options["groups"] = 1, _divisors(c)
    return pair(d, x, which, *_vary(d, base, options), where=where)


def p_conv(d: Draft, h: str) -> str:
    x = d.to_channels(h)
    out = d.pick([2, 4])
    base = {"out": out, "k": 3, "stride": 1, "padding": 1, "dilation": 1, "groups": 1, "bias": d.chance(0.7)}
    options = {"k": [1, 2, 3], "stride": [1, 2], "padding": [0, 1], "dilation": [1, 2],
               "groups": _divisors(math.gcd(d.shape(x)[1], out))}
    return pair(d, x, "conv", *_vary(d, base, options), where="none")


def p_attention(d: Draft, h: str) -> str:
    flavour = d.pick(["sdpa", "attention", "mha"])
    e = d.shape(h)[-1]
    key, options = d.pick([("causal", [False, True])] * 3 + [("heads", [k for k in (1, 2) if e % k == 0])])
    va, vb = _two(d, options)
    return d.merge(attention_branch(d, h, flavour, **{key: va}), attention_branch(d, h, flavour, **{key: vb}))


TOKENS, CHANNELS, ALL = ("tokens",), ("image", "seq", "tokens"), ("tokens", "image", "seq", "vec")
RANK3 = ("tokens", "image", "seq")
FAMILIES: dict[str, tuple[tuple[str, ...], Callable]] = {
    # name: (input kinds it is drawn with when it comes first, block)
    "linear": (ALL, b_linear), "act": (ALL, b_act), "residual": (ALL, b_residual), "gate": (ALL, b_gate),
    "norm": (ALL, b_norm), "conv": (CHANNELS, b_conv), "pool": (CHANNELS, b_pool),
    "softmax": (RANK3, b_softmax), "view": (RANK3, b_view), "catsplit": (ALL, b_catsplit),
    "const": (ALL, b_const), "const_vector": (ALL, b_const_vector), "const_tokens": (RANK3, b_const_tokens),
    "mask": (("image",), b_mask), "mask_features": (RANK3, b_mask_features),
    "reduce": (RANK3, b_reduce), "embed": (TOKENS, b_embed), "attention": (TOKENS, b_attention),
    "pair_layernorm": (ALL, p_layernorm), "pair_norm": (ALL, p_norm), "pair_conv": (CHANNELS, p_conv),
    "pair_attention": (TOKENS, p_attention),
}
# pairs whose branch parameters sit after the op (``pair_X``: the op acts on a shared input)
# or before it (``pair_X_pre``: the op acts on each branch's own linear map)
for _name, _kinds, _block in [("act", ALL, p_act), ("softmax", RANK3, p_softmax), ("view", RANK3, p_view),
                              ("pool", CHANNELS, p_pool), ("pad", CHANNELS, p_pad), ("reduce", RANK3, p_reduce),
                              ("reduce_features", ALL, p_reduce_features), ("mask", ("image",), p_mask),
                              ("const", ALL, p_const), ("const_vector", ALL, p_const_vector),
                              ("const_tokens", RANK3, p_const_tokens)]:
    FAMILIES[f"pair_{_name}"] = (_kinds, functools.partial(_block, where="post"))
    FAMILIES[f"pair_{_name}_pre"] = (_kinds, functools.partial(_block, where="pre"))
