"""What each chunk of a zoo trains: one architecture (family, dataset, builder kwargs) and
its members' training hyperparameters, all drawn from the zoo seed.

A chunk's plan depends only on ``(spec, chunk index)`` — drawn from
``numpy.random.default_rng([seed, chunk, ...])`` — so chunks can be generated in any order,
by any worker, and a resumed run re-creates exactly the chunks it skipped.

Families and the datasets they see (10 combinations, visited in a seeded order, each
block of 10 consecutive chunks covers every combination once):

==========  ======================  =======================================================
family      datasets (layout)       architecture choices
==========  ======================  =======================================================
mlp         digits, mnist1d (flat)  width 4-32, depth 1-3, relu/gelu/tanh
cnn2d       digits (image)          width 4-16, depth 1-3, kernel 3/5, relu/gelu, batch/group/none
cnn1d       digits, mnist1d (seq)   width 4-16, depth 2-3, kernel 3/5/7, relu/gelu, batch/group/none
resnet      digits (image)          width 4-8, 1-2 blocks, optional widening block, norms as cnn
deepsets    digits, mnist1d (set)   width 8-24, depth 1-2, relu/gelu/tanh
vit         digits (image),         width 8-16, 1-2 blocks, 1-2 heads, patch 2/4 (digits) or
            mnist1d (seq)           4/8 (mnist1d), gelu/relu
==========  ======================  =======================================================

``width`` is the family's main width (hidden units, channels, token dimension); the OOD
split of :mod:`gmn_models.zoo.experiment` uses it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from . import data as zdata
from .train_vmap import MemberConfig

COMBOS: tuple[tuple[str, str], ...] = (
    ("mlp", "digits"), ("mlp", "mnist1d"), ("cnn2d", "digits"), ("cnn1d", "digits"),
    ("cnn1d", "mnist1d"), ("resnet", "digits"), ("deepsets", "digits"), ("deepsets", "mnist1d"),
    ("vit", "digits"), ("vit", "mnist1d"),
)
LAYOUT = {"mlp": "flat", "cnn2d": "image", "cnn1d": "seq", "resnet": "image", "deepsets": "set"}
ARCH_COLUMNS = ("width", "depth", "kernel_size", "activation", "norm", "heads", "patch", "widen")
SIZES = {  # chunks, members per chunk, epoch choices
    "small": (20, 16, (1, 2, 4, 8, 16)),
    "full": (160, 32, (1, 2, 4, 8, 16, 32)),
}


@dataclass(frozen=True)
class ZooSpec:
    """Everything that determines a zoo (stored as ``zoo.json``). ``combos``: the
    (family, dataset) pairs to visit; ``epochs``: the choices for a member's epochs."""

    seed: int = 0
    chunks: int = 20
    members: int = 16
    epochs: tuple[int, ...] = (1, 2, 4, 8, 16)
    batch_size: int = 32
    combos: tuple[tuple[str, str], ...] = COMBOS

    @classmethod
    def for_size(cls, size: str, seed: int = 0, **overrides) -> "ZooSpec":
        """The preset ``size`` (``small``: 320 networks, ``full``: 5,120), with overrides."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
        chunks, members, epochs = SIZES[size]
        return cls(**{"seed": seed, "chunks": chunks, "members": members, "epochs": epochs, **overrides})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ZooSpec":
        return cls(**{**d, "epochs": tuple(d["epochs"]), "combos": tuple(tuple(c) for c in d["combos"])})


@dataclass(frozen=True)
class ChunkPlan:
    """One chunk: ``members`` share ``builder``/``builder_kwargs``; ``arch`` holds the
    metadata columns (:data:`ARCH_COLUMNS`, ``None`` where not applicable)."""

    index: int
    family: str
    dataset: str
    layout: str
    builder: str
    builder_kwargs: dict
    input_shape: list[int]
    arch: dict
    members: list[MemberConfig] = field(default_factory=list)
    batch_size: int = 32


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def sample_arch(family: str, dataset: str, rng: np.random.Generator) -> tuple[str, dict, dict]:
    """(layout, builder kwargs, arch metadata) for one architecture of ``family``."""
    d = zdata.sample_shape(dataset, "flat")[0]
    arch = dict.fromkeys(ARCH_COLUMNS)
    act3, act2, norms = ("relu", "gelu", "tanh"), ("relu", "gelu"), ("batch", "group", "none")
    if family == "mlp":
        arch.update(width=_pick(rng, (4, 8, 16, 24, 32)), depth=_pick(rng, (1, 2, 3)), activation=_pick(rng, act3))
        kw = dict(in_features=d, width=arch["width"], depth=arch["depth"], activation=arch["activation"])
    elif family in ("cnn2d", "cnn1d"):
        arch.update(width=_pick(rng, (4, 6, 8, 12, 16)), activation=_pick(rng, act2), norm=_pick(rng, norms))
        arch.update(depth=_pick(rng, (1, 2, 3)) if family == "cnn2d" else _pick(rng, (2, 3)),
                    kernel_size=_pick(rng, (3, 5)) if family == "cnn2d" else _pick(rng, (3, 5, 7)))
        kw = {k: arch[k] for k in ("width", "depth", "kernel_size", "activation", "norm")}
    elif family == "resnet":
        arch.update(width=_pick(rng, (4, 6, 8)), depth=_pick(rng, (1, 2)), widen=bool(_pick(rng, (0, 1))),
                    activation=_pick(rng, act2), norm=_pick(rng, norms), kernel_size=3)
        kw = {k: arch[k] for k in ("width", "depth", "widen", "activation", "norm")}
    elif family == "deepsets":
        arch.update(width=_pick(rng, (8, 12, 16, 24)), depth=_pick(rng, (1, 2)), activation=_pick(rng, act3))
        kw = dict(set_size=d, width=arch["width"], depth=arch["depth"], activation=arch["activation"])
    elif family == "vit":
        layout = "image" if dataset == "digits" else "seq"
        arch.update(width=_pick(rng, (8, 12, 16)), depth=_pick(rng, (1, 2)), heads=_pick(rng, (1, 2)),
                    patch=_pick(rng, (2, 4) if dataset == "digits" else (4, 8)), activation=_pick(rng, act2))
        kw = dict(in_shape=zdata.sample_shape(dataset, layout), patch=arch["patch"], width=arch["width"],
                  depth=arch["depth"], heads=arch["heads"], activation=arch["activation"])
        return layout, kw, arch
    else:
        raise ValueError(f"unknown family {family!r}")
    return LAYOUT[family], kw, arch


def sample_member(spec: ZooSpec, chunk: int, j: int) -> MemberConfig:
    """Member ``j`` of ``chunk``: AdamW lr log-uniform in [3e-4, 3e-2]; epochs from
    ``spec.epochs``; weight decay 0 (p=1/4) or log-uniform in [1e-4, 1]; label noise 0
    (p=1/2) or uniform in [0.05, 0.8]; init scale 2**U(-1.5, 1.5); a unique seed."""
    rng = np.random.default_rng([spec.seed, chunk, 1 + j])
    lr = float(10 ** rng.uniform(math.log10(3e-4), math.log10(3e-2)))
    epochs = int(_pick(rng, spec.epochs))
    wd = 0.0 if rng.random() < 0.25 else float(10 ** rng.uniform(-4, 0))
    noise = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.05, 0.8))
    init_scale = float(2 ** rng.uniform(-1.5, 1.5))
    seed = spec.seed * 10**7 + chunk * 10**3 + j  # unique while members < 1000, chunks < 10**4
    return MemberConfig(seed=seed, lr=lr, epochs=epochs, weight_decay=wd, label_noise=noise,
                        init_scale=init_scale)


def chunk_plan(spec: ZooSpec, chunk: int) -> ChunkPlan:
    """The plan of chunk ``chunk`` (0 <= chunk < spec.chunks)."""
    block, pos = divmod(chunk, len(spec.combos))
    order = np.random.default_rng([spec.seed, block, 10**6]).permutation(len(spec.combos))
    family, dataset = spec.combos[int(order[pos])]
    layout, kw, arch = sample_arch(family, dataset, np.random.default_rng([spec.seed, chunk, 0]))
    members = [sample_member(spec, chunk, j) for j in range(spec.members)]
    return ChunkPlan(index=chunk, family=family, dataset=dataset, layout=layout,
                     builder=f"gmn_models.zoo.families:{family}", builder_kwargs=kw,
                     input_shape=[1, *zdata.sample_shape(dataset, layout)], arch=arch,
                     members=members, batch_size=spec.batch_size)
