"""Generate a model zoo in the model folder format (:mod:`gmn_models.zoo.folder`).

    python -m gmn_models.zoo.generate --out zoo_small --size small            # 320 networks
    python -m gmn_models.zoo.generate --out zoo_full --size full --workers 2  # 5,120 networks

The zoo is cut into chunks (one architecture, ``members`` networks trained together by
:func:`gmn_models.zoo.train_vmap.train_group`). A chunk is written atomically: its
``.safetensors`` files go to a temporary folder renamed to ``models/chunk_NNNNN``, then
``chunks/chunk_NNNNN.sha256`` and finally ``chunks/chunk_NNNNN.csv`` — the CSV is the "done"
marker. A rerun skips finished chunks and redoes unfinished ones; after each chunk
``models.csv`` (finished chunks, in chunk order) and ``manifest.sha256`` are rewritten
atomically. ``zoo.json`` holds the :class:`~gmn_models.zoo.plan.ZooSpec`; resuming with a
different spec is refused. Everything except ``timing.jsonl`` (wall-clock seconds per chunk,
not in the manifest) is deterministic given the spec and the per-worker thread count.

Workers are processes (``--workers``), each single-threaded by default: on small networks
one thread per process is much faster than several threads per process, and far more so on
a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from ..model_folder import reserved_cells
from ..workers import usable_workers
from . import data as zdata
from .families import resolve_builder
from .folder import COLUMNS, atomic_write_text, rows_to_csv, sha256_file, write_manifest
from .plan import ChunkPlan, ZooSpec, chunk_plan
from .train_vmap import train_group


def chunk_name(index: int) -> str:
    return f"chunk_{index:05d}"


def is_done(folder: Path, index: int) -> bool:
    return (folder / "chunks" / f"{chunk_name(index)}.csv").is_file()


def run_chunk(folder: str | os.PathLike, plan: ChunkPlan) -> dict:
    """Train the chunk and write it atomically into ``folder``. Returns its timing record
    ``{chunk, family, dataset, networks, member_epochs, seconds, cpu_seconds}`` (training
    only: wall-clock and this process's CPU time)."""
    folder = Path(folder)
    split = zdata.load(plan.dataset)
    x_train = zdata.to_layout(split.x_train, plan.dataset, plan.layout)
    x_test = zdata.to_layout(split.x_test, plan.dataset, plan.layout)
    start, cpu_start = time.perf_counter(), time.process_time()
    results = train_group(resolve_builder(plan.builder), plan.builder_kwargs, plan.members, x_train,
                          split.y_train, x_test, split.y_test, batch_size=plan.batch_size)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    name = chunk_name(plan.index)
    final = folder / "models" / name
    tmp = folder / "models" / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows, hashes = [], {}
    for j, (member, res) in enumerate(zip(plan.members, results)):
        fname = f"m{j:03d}.safetensors"
        rel = f"models/{name}/{fname}"
        save_file(res.state_dict, str(tmp / fname), metadata={"builder": plan.builder})
        hashes[rel] = sha256_file(tmp / fname)
        n_params = sum(v.numel() for v in res.state_dict.values() if v.is_floating_point())
        rows.append({**reserved_cells(rel, plan.builder, plan.builder_kwargs, plan.input_shape),
                     "test_acc": res.test_acc, "train_acc": res.train_acc, "family": plan.family,
                     "dataset": plan.dataset, "layout": plan.layout, **plan.arch, "lr": member.lr,
                     "epochs": member.epochs,
                     "init_scale": member.init_scale, "weight_decay": member.weight_decay,
                     "label_noise": member.label_noise, "batch_size": plan.batch_size,
                     "seed": member.seed, "n_params": n_params, "chunk": plan.index, "member": j})
    if final.exists():  # left by a run interrupted before its CSV was written
        shutil.rmtree(final)
    os.replace(tmp, final)
    chunks = folder / "chunks"
    chunks.mkdir(exist_ok=True)
    atomic_write_text(chunks / f"{name}.sha256", "".join(f"{h}  {p}\n" for p, h in sorted(hashes.items())))
    atomic_write_text(chunks / f"{name}.csv", rows_to_csv(rows))
    return {"chunk": plan.index, "family": plan.family, "dataset": plan.dataset,
            "networks": len(rows), "member_epochs": sum(m.epochs for m in plan.members),
            "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3)}


def finalize(folder: str | os.PathLike, spec: ZooSpec, columns: tuple[str, ...] = COLUMNS) -> int:
    """Rewrite ``models.csv`` (header ``columns``) from the finished chunks of ``spec`` (any
    spec with a ``chunks`` count) and ``manifest.sha256``; returns the number of rows."""
    folder = Path(folder)
    lines: list[str] = []
    hashes: dict[str, str] = {}
    for i in range(spec.chunks):
        if not is_done(folder, i):
            continue
        base = folder / "chunks" / chunk_name(i)
        lines += Path(f"{base}.csv").read_text().splitlines(keepends=True)[1:]
        for line in Path(f"{base}.sha256").read_text().splitlines():
            h, p = line.split("  ", 1)
            hashes[p] = h
        hashes[f"chunks/{chunk_name(i)}.csv"] = sha256_file(f"{base}.csv")
        hashes[f"chunks/{chunk_name(i)}.sha256"] = sha256_file(f"{base}.sha256")
    atomic_write_text(folder / "models.csv", rows_to_csv([], columns) + "".join(lines))
    hashes["models.csv"] = sha256_file(folder / "models.csv")
    hashes["zoo.json"] = sha256_file(folder / "zoo.json")
    write_manifest(folder, hashes)
    return len(lines)


def prepare_folder(folder: Path, spec_json: dict, what: str) -> None:
    """Create the folder or check that its ``zoo.json`` holds ``spec_json`` (``what``, e.g.
    "a zoo", names the folder's kind in the error); remove temporaries left by an interrupted
    run (one generator per folder at a time): chunk folders ``.*.tmp-*`` and the ``.gmn-*``
    files of atomic writes (:mod:`gmn_compiler.fileio`)."""
    folder.mkdir(parents=True, exist_ok=True)
    leftovers = [*folder.glob(".*.tmp-*"), *folder.glob("*/.*.tmp-*"), *folder.glob(".gmn-*"),
                 *folder.glob("*/.gmn-*")]
    for stale in leftovers:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    spec_file = folder / "zoo.json"
    text = json.dumps(spec_json, indent=1, sort_keys=True) + "\n"
    if spec_file.exists():
        if json.loads(spec_file.read_text()) != json.loads(text):
            raise ValueError(f"{folder} holds {what} with a different spec (zoo.json); "
                             "use another folder or the same options")
    else:
        atomic_write_text(spec_file, text)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_chunks(folder: Path, chunks: int, max_chunks: int | None, run_here: Callable[[int], dict],
               run_in_worker: Callable[..., dict], worker_args: tuple, finish: Callable[[], int],
               describe: Callable[[dict], str], workers: int = 1, threads: int | None = 1, log=None) -> dict:
    """Run the chunks of ``range(chunks)`` not yet done in ``folder`` (at most ``max_chunks``):
    here, one after the other (``run_here(i)``, with ``threads`` torch threads, ``None``: as
    they are), or in ``workers`` spawn processes (``run_in_worker(*worker_args, i)``, ``threads``
    or 1 torch threads each). After each chunk its timing record is appended to
    ``timing.jsonl``, ``finish()`` rewrites the folder's table and manifest, and ``log`` gets
    ``describe(record)``. Returns ``{"done", "skipped", "rows", "timings"}``."""
    todo = [i for i in range(chunks) if not is_done(folder, i)]
    skipped = chunks - len(todo)
    todo = todo[:max_chunks] if max_chunks is not None else todo
    timings: list[dict] = []

    def record(t: dict) -> None:
        timings.append(t)
        with open(folder / "timing.jsonl", "a") as f:
            f.write(json.dumps(t) + "\n")
        finish()
        if log:
            print(f"{describe(t)} ({len(timings)}/{len(todo)})", file=log, flush=True)

    if usable_workers(workers) <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)
        try:
            for i in todo:
                record(run_here(i))
        finally:
            torch.set_num_threads(previous)
    elif todo:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads or 1,)) as pool:
            futures = [pool.submit(run_in_worker, *worker_args, i) for i in todo]
            for fut in as_completed(futures):
                record(fut.result())
    return {"done": len(timings), "skipped": skipped, "rows": finish(), "timings": timings}


def _run_in_worker(folder: str, spec_json: dict, index: int) -> dict:
    return run_chunk(folder, chunk_plan(ZooSpec.from_json(spec_json), index))


def generate(folder: str | os.PathLike, spec: ZooSpec, workers: int = 1, threads: int = 1,
             max_chunks: int | None = None, log=None) -> dict:
    """Generate (or resume) the zoo ``spec`` in ``folder``; at most ``max_chunks`` new chunks
    this call. ``workers`` > 1 trains chunks in that many processes (``threads`` torch
    threads each). Returns ``{"done", "skipped", "rows", "timings"}``."""
    folder = Path(folder)
    prepare_folder(folder, spec.to_json(), "a zoo")
    return run_chunks(folder, spec.chunks, max_chunks, lambda i: run_chunk(folder, chunk_plan(spec, i)),
                      _run_in_worker, (str(folder), spec.to_json()), lambda: finalize(folder, spec),
                      lambda t: f"chunk {t['chunk']:5d} {t['family']:8s} {t['dataset']:8s} {t['networks']} nets "
                                f"{t['seconds']:.1f}s", workers, threads, log)


def rate_table(timings: list[dict]) -> str:
    """Markdown: networks trained per second per family, by one worker's wall-clock time and
    by its CPU time (the CPU rate is what one free core achieves on a busy machine)."""
    by: dict[str, list[float]] = {}
    for t in timings:
        agg = by.setdefault(t["family"], [0, 0, 0.0, 0.0])
        agg[0] += t["networks"]
        agg[1] += t["member_epochs"]
        agg[2] += t["seconds"]
        agg[3] += t.get("cpu_seconds", t["seconds"])
    lines = ["| family | networks | mean epochs | wall s | CPU s | networks/wall s | networks/CPU s |",
             "|---|---|---|---|---|---|---|"]
    total = [sum(col) for col in zip(*by.values())]
    for fam, (n, e, s, c) in [*sorted(by.items()), ("all", total)]:
        lines.append(f"| {fam} | {n} | {e / n:.1f} | {s:.1f} | {c:.1f} | {n / s:.2f} | {n / c:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gmn_models.zoo.generate",
                                description="Generate (or resume) a model zoo in the model folder format.")
    p.add_argument("--out", required=True, help="zoo folder (created or resumed)")
    p.add_argument("--size", choices=["small", "full"], default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunks", type=int, help="override the preset's number of chunks")
    p.add_argument("--members", type=int, help="override the preset's networks per chunk")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--max-chunks", type=int, help="stop after this many new chunks (resume later)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("chunks", args.chunks), ("members", args.members)) if v is not None}
    spec = ZooSpec.for_size(args.size, seed=args.seed, **overrides)
    try:
        out = generate(args.out, spec, workers=args.workers, threads=args.threads,
                       max_chunks=args.max_chunks, log=None if args.quiet else sys.stderr)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {out['rows']} networks ({out['done']} chunks trained, {out['skipped']} already done)")
    if out["timings"]:
        print(rate_table(out["timings"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
