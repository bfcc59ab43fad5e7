"""Zoo training speed: vectorised training (``train_group``, vmap over a chunk's members)
against the plain loop that trains the same members one after another (``train_alone``).

    python bench/zoo_speed.py                    # one chunk per (family, dataset), 32 members
    python bench/zoo_speed.py --members 8 --combos mlp/digits,vit/mnist1d

For each (family, dataset) pair the first chunk of the full zoo's plan with that pair is
trained both ways, on one thread, with the same members (seeds, learning rates, epochs, label
noise): the ratio of the two times is the speed-up the generator gets from vectorising. Both
compute the same recipe (tests/gmn_models/test_zoo_train.py checks agreement to 1e-9 in
float64); the last column is the largest test-accuracy difference between the two here, in
float32: long runs at high learning rates amplify rounding differences (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from gmn_models.zoo import data as zdata
from gmn_models.zoo.families import resolve_builder
from gmn_models.zoo.plan import COMBOS, ZooSpec, chunk_plan
from gmn_models.zoo.train_vmap import train_alone, train_group


def first_chunk(spec: ZooSpec, family: str, dataset: str):
    for index in range(spec.chunks):
        plan = chunk_plan(spec, index)
        if (plan.family, plan.dataset) == (family, dataset):
            return plan
    raise ValueError(f"no chunk of {family}/{dataset} in the plan")


def measure(plan, members: int) -> dict:
    split = zdata.load(plan.dataset)
    x_train = zdata.to_layout(split.x_train, plan.dataset, plan.layout)
    x_test = zdata.to_layout(split.x_test, plan.dataset, plan.layout)
    builder, chosen = resolve_builder(plan.builder), plan.members[:members]
    args = (x_train, split.y_train, x_test, split.y_test)
    start = time.perf_counter()
    alone = [train_alone(builder, plan.builder_kwargs, m, *args, batch_size=plan.batch_size) for m in chosen]
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    group = train_group(builder, plan.builder_kwargs, chosen, *args, batch_size=plan.batch_size)
    vmap_s = time.perf_counter() - start
    return {"combo": f"{plan.family}/{plan.dataset}", "networks": len(chosen),
            "member_epochs": sum(m.epochs for m in chosen), "loop_s": loop_s, "vmap_s": vmap_s,
            "max_dacc": max(abs(a.test_acc - g.test_acc) for a, g in zip(alone, group))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=32, help="networks per chunk (the full zoo has 32)")
    p.add_argument("--combos", help="comma-separated family/dataset pairs (default: all ten)")
    args = p.parse_args()
    torch.set_num_threads(1)
    combos = [tuple(c.split("/")) for c in args.combos.split(",")] if args.combos else list(COMBOS)
    spec = ZooSpec.for_size("full")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print("| family/dataset | networks | member-epochs | loop s | vmap s | speed-up | max Δ test acc |")
    print("|---|---|---|---|---|---|---|")
    total_loop = total_vmap = 0.0
    for family, dataset in combos:
        r = measure(first_chunk(spec, family, dataset), args.members)
        total_loop, total_vmap = total_loop + r["loop_s"], total_vmap + r["vmap_s"]
        print(f"| {r['combo']} | {r['networks']} | {r['member_epochs']} | {r['loop_s']:.1f} | "
              f"{r['vmap_s']:.1f} | {r['loop_s'] / r['vmap_s']:.2f}× | {r['max_dacc']:.3f} |", flush=True)
    print(f"| all | | | {total_loop:.1f} | {total_vmap:.1f} | {total_loop / total_vmap:.2f}× | |")


if __name__ == "__main__":
    main()
