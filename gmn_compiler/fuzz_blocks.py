"""The single-path blocks of the fuzz grammar and the argument drawers that the parallel
branches (:mod:`gmn_compiler.fuzz_families`) share; see :mod:`gmn_compiler.fuzz_grammar`.

Each block takes the current activation ``h`` and returns the new one, drawing its
attributes at random; it raises :class:`~gmn_compiler.fuzz_draft.Reject` when it does not
fit ``h`` (the draft is then rolled back).
"""

from __future__ import annotations

import math
from typing import Any

from .fuzz_draft import Draft, Reject
from .fuzz_program import ACTIVATIONS

EPS = (1e-5, 1e-2, 0.5)
HOLDERS = ("buffer", "attr", "inline")


def act_args(d: Draft) -> dict[str, Any]:
    fn = d.pick(ACTIVATIONS)
    a: dict[str, Any] = {"fn": fn}
    if fn == "leaky_relu":
        a["slope"] = d.pick([0.01, 0.1, 0.2, 0.5])
    elif fn == "elu":
        a["alpha"] = d.pick([0.5, 1.0, 2.0])
    elif fn in ("hardtanh", "clamp"):
        a["lo"], a["hi"] = d.pick([-1.0, -0.5, 0.0]), d.pick([0.5, 1.0, 2.0])
        if fn == "clamp" and d.chance(0.5):
            a[d.pick(["lo", "hi"])] = None
    elif fn == "gelu":
        a["approximate"] = d.pick(["none", "tanh"])
    return a


def _two(d: Draft, options) -> tuple:
    options = list(options)
    if len(options) < 2:
        raise Reject("no two options")
    return tuple(d.rng.sample(options, 2))


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _feat_after_removing(f: int | None, axis: int) -> int | None:
    return None if f is None or f == axis else f - (axis < f)


# ----------------------------------------------------------------------------- trunk blocks


def b_linear(d: Draft, h: str) -> str:
    h = d.linear(h)
    return d.add("act", [h], **act_args(d)) if d.chance(0.6) else h


def b_act(d: Draft, h: str) -> str:
    return d.add("act", [h], **act_args(d))


def b_residual(d: Draft, h: str) -> str:
    if d.feat[h] is None:
        raise Reject("no features")
    t = d.add("act", [d.linear(h)], **act_args(d))
    return d.add("add", [h, d.linear(t, d.shape(h)[d.feat[h]])])


def b_gate(d: Draft, h: str) -> str:
    w = d.width()
    return d.add(d.pick(["gate", "mul"]), [d.linear(h, w), d.linear(h, w)])


def _norm(d: Draft, h: str, which: str, **extra) -> str:
    eps = extra.pop("eps", d.pick(EPS))
    affine = extra.pop("affine", d.chance(0.8))
    if which == "layernorm":
        x = d.to_features_last(h)
        return d.add("layernorm", [x], dims=extra.get("dims", 1), eps=eps, affine=affine, bias=d.chance(0.8))
    if which == "rmsnorm":
        x = d.to_features_last(h)
        return d.add("rmsnorm", [x], dims=extra.get("dims", 1), eps=eps, affine=affine)
    x = d.to_channels(h) if d.kind(h) != "vec" else h
    if which == "batchnorm":
        return d.add("batchnorm", [x], eps=eps, affine=affine)
    groups = extra.get("groups") or d.pick(_divisors(d.shape(x)[1]))
    return d.add("groupnorm", [x], groups=groups, eps=eps, affine=affine)


def b_norm(d: Draft, h: str) -> str:
    which = d.pick(["layernorm", "rmsnorm", "batchnorm", "groupnorm"])
    dims = d.pick([1, 1, 2]) if d.rank(h) >= 3 else 1
    return _norm(d, h, which, dims=dims)


def conv_args(d: Draft, c_in: int) -> dict[str, Any]:
    out = d.width()
    k = d.pick([1, 2, 3])
    dilation = d.pick([1, 1, 2])
    return {"out": out, "k": k, "stride": d.pick([1, 1, 2]), "dilation": dilation,
            "padding": d.rng.randint(0, (k // 2) * dilation), "groups": d.pick(_divisors(math.gcd(c_in, out))),
            "bias": d.chance(0.7)}


def _channels_op(d: Draft, h: str, op: str, args: dict[str, Any]) -> str:
    was_tokens = d.kind(h) == "tokens"
    y = d.add(op, [d.to_channels(h)], **args)
    return d.add("transpose", [y], feat=2, a=1, b=2) if was_tokens and d.chance(0.7) else y


def b_conv(d: Draft, h: str) -> str:
    return _channels_op(d, h, "conv", conv_args(d, d.shape(d.to_channels(h))[1]))


def pool_args(d: Draft) -> dict[str, Any]:
    k = d.pick([1, 2, 3])
    return {"kind": d.pick(["max", "avg"]), "k": k, "stride": d.pick([None, 1, 2]), "padding": d.rng.randint(0, k // 2)}


def b_pool(d: Draft, h: str) -> str:
    return _channels_op(d, h, "pool", pool_args(d))


def b_softmax(d: Draft, h: str) -> str:
    return d.add("softmax", [h], axis=d.pick(range(1, d.rank(h))))


def view_step(d: Draft, h: str) -> str:
    """One view of ``h`` along free axes (or, rarely, its feature axis)."""
    r, f, shape = d.rank(h), d.feat[h], d.shape(h)
    free = d.free_axes(h)
    what = d.pick(["select", "slice", "flip", "roll", "transpose", "permute", "flatten", "unflatten"])
    if what in ("select", "slice", "flip", "roll") and free:
        ax = d.pick(free)
        n = shape[ax]
        if what == "select":
            return d.add("select", [h], feat=_feat_after_removing(f, ax), axis=ax, index=d.rng.randrange(n))
        if what == "slice":
            start = d.rng.randrange(n - 1)
            return d.add("slice", [h], axis=ax, start=start, end=d.rng.randint(start + 1, n), step=d.pick([1, 1, 2]))
        if what == "flip":
            return d.add("flip", [h], axes=[ax])
        return d.add("roll", [h], shift=d.rng.randint(1, n - 1), axis=ax)
    if what == "transpose" and r >= 3:
        a, b = _two(d, range(1, r))
        return d.add("transpose", [h], feat={a: b, b: a}.get(f, f), a=a, b=b)
    if what == "permute" and r >= 3:
        rest = list(range(1, r))
        d.rng.shuffle(rest)
        dims = [0] + rest
        return d.add("permute", [h], feat=None if f is None else dims.index(f), dims=dims)
    if what == "flatten" and r >= 3:
        s = d.rng.randint(1, r - 2)
        e = d.rng.randint(s + 1, r - 1)
        nf = None if f is None else (s if s <= f <= e else (f - (e - s) if f > e else f))
        return d.add("flatten", [h], feat=nf, start=s, end=e)
    if what == "unflatten":
        ax = d.pick([a for a in range(1, r) if shape[a] % 2 == 0] or [None])
        if ax is None:
            raise Reject("nothing to unflatten")
        nf = None if f is None else (f + 1 if f >= ax else f)
        return d.add("unflatten", [h], feat=nf, axis=ax, sizes=[2, shape[ax] // 2])
    raise Reject(f"no {what} for this layout")


def b_view(d: Draft, h: str) -> str:
    h = view_step(d, h)
    return view_step(d, h) if d.chance(0.3) else h


def b_catsplit(d: Draft, h: str) -> str:
    f = d.feat[h]
    axes = [a for a in range(1, d.rank(h)) if d.shape(h)[a] >= 2]
    how = d.pick(["split", "chunk", "cat_linear", "rotate"])
    if how == "cat_linear" and f is not None:
        return d.add("cat", [d.linear(h), d.linear(h)], axis=f)
    ax = d.pick(axes)
    n = d.shape(h)[ax]
    if how == "split":
        s = d.rng.randint(1, n - 1)
        a, b = d.add_multi("split", [h], sizes=[s, n - s], axis=ax)
        a = d.add("act", [a], **act_args(d)) if d.chance(0.5) else a
        return d.add("cat", [b, a] if d.chance(0.5) else [a, b], axis=ax)
    if how == "chunk":
        parts = d.add_multi("chunk", [h], chunks=2, axis=ax)
        if len(parts) == 2 and d.shape(parts[0]) == d.shape(parts[1]):
            return d.add(d.pick(["add", "mul"]), parts)
        return d.add("cat", parts[::-1], axis=ax)
    s = d.rng.randint(1, n - 1)  # rotate: cat([h[s:], h[:s]]) along a free axis
    a = d.add("slice", [h], axis=ax, start=s, end=n)
    b = d.add("slice", [h], axis=ax, start=0, end=s)
    return d.add("cat", [a, b], axis=ax)


def const_args(d: Draft, h: str, along: str) -> dict[str, Any]:
    """A constant operand: ``along`` "scalar", "feature" (a vector along the feature axis)
    or "free" (a sinusoid along a free axis)."""
    mode = d.pick(["mul", "add"])
    if along == "scalar":
        return {"mode": mode, "value": d.pick([0.5, 2.0, -1.0, 3.0])}
    holder = d.pick(HOLDERS + ("buffer", "attr"))  # a literal in forward (inline) is refused today
    if along == "feature":
        if d.feat[h] is None:
            raise Reject("no feature axis")
        recipe = {"kind": "vector", "axis": d.feat[h], "seed": d.rng.randrange(100)}
        return {"mode": mode, "holder": holder, "recipe": recipe}
    recipe = {"kind": "wave", "axis": d.pick(d.free_axes(h)), "fn": d.pick(["sin", "cos"]),
              "freq": d.pick([1.0, 0.5]), "phase": d.pick([0.0, 1.0])}
    return {"mode": mode, "holder": holder, "recipe": recipe}


def b_const(d: Draft, h: str) -> str:
    return d.add("const", [h], **const_args(d, h, "scalar"))


def b_const_vector(d: Draft, h: str) -> str:
    return d.add("const", [h], **const_args(d, h, "feature"))


def b_const_tokens(d: Draft, h: str) -> str:
    return d.add("const", [h], **const_args(d, h, "free"))


def mask_args(d: Draft, h: str, features: bool = False) -> dict[str, Any]:
    """A causal / anti-causal mask over two free axes of ``h`` (or a free axis and the
    feature axis)."""
    free = d.free_axes(h)
    axes = sorted([d.pick(free), d.feat[h]] if features and d.feat[h] is not None else _two(d, free))
    return {"axes": axes, "kind": d.pick(["causal", "anti"]), "diag": d.pick([-1, 0, 1]),
            "how": d.pick(["masked_fill", "where"]), "fill": d.pick([0.0, -1.0, 1.0]),
            "holder": d.pick(["buffer", "inline"])}


def b_mask(d: Draft, h: str) -> str:
    return d.add("mask", [h], **mask_args(d, h))


def b_mask_features(d: Draft, h: str) -> str:
    return d.add("mask", [h], **mask_args(d, h, features=True))


def b_reduce(d: Draft, h: str) -> str:
    free = d.free_axes(h)
    axes = sorted(d.rng.sample(free, d.rng.randint(1, len(free)))) if free else []
    if not axes:
        raise Reject("no free axis")
    keep = d.chance(0.5)
    f = d.feat[h]
    nf = f if keep or f is None else f - sum(a < f for a in axes)
    return d.add("reduce", [h], feat=nf, fn=d.pick(["mean", "sum", "amax"]), axes=axes, keepdim=keep)


def b_embed(d: Draft, h: str) -> str:
    if d.kind(h) != "tokens" or "ids" in d.env:
        raise Reject("embeddings join tokens")
    vocab = d.rng.randint(3, 6)
    ids = d.input("ids", [d.shape(h)[0], d.shape(h)[1]], feat=None, dtype="long", vocab=vocab)
    e = d.add("embedding", [ids], feat=2, vocab=vocab, dim=d.shape(h)[2])
    return d.add("add", [h, e]) if d.chance(0.8) else e


def attention_branch(d: Draft, h: str, flavour: str, **args) -> str:
    """Attention of ``flavour`` ("sdpa", "attention": written out, "mha") on tokens ``h``."""
    if d.kind(h) != "tokens":
        raise Reject("attention wants tokens")
    e = d.shape(h)[2]
    args.setdefault("heads", d.pick([k for k in (1, 2) if e % k == 0]))
    if flavour == "mha":
        ins = [h] if d.chance(0.7) else [h, d.add("act", [d.linear(h, e)], **act_args(d))]
        return d.add("mha", ins, bias=d.chance(0.7), **args)
    if d.chance(0.3):  # one qkv projection, chunked (timm style)
        qkv = d.add_multi("chunk", [d.linear(h, 3 * e)], chunks=3, axis=-1)
    else:
        qkv = [d.linear(h, e) for _ in range(3)]
    return d.add(flavour, qkv, **args)


def b_attention(d: Draft, h: str) -> str:
    y = attention_branch(d, h, d.pick(["sdpa", "attention", "mha"]), causal=d.chance(0.5))
    return d.linear(y) if d.chance(0.5) else y
