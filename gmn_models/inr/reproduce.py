"""All INR tasks of issue 13 in one command: zoos, classification, editing, representations.

    python -m gmn_models.inr.reproduce --out inr_run --size small     # about a minute
    python -m gmn_models.inr.reproduce --out inr_run --size full      # hours on 2 cores

Writes under ``--out``: the four zoos (``zoos/{images,sine}_{standard,diverse}``, resumable),
one JSON file of records per experiment (``results/*.json``; an experiment whose file exists
is not rerun, so an interrupted run resumes) and ``report.md`` with every table. Sizes
(:data:`SIZES`): ``full`` is what ``docs/results_inr.md`` reports on (1,280 MNIST INRs and
2,560 sine INRs per zoo, 3 seeds, the epochs listed there); ``small`` is a scaled-down run of
every step on scikit-learn's 8x8 digits (a PSNR floor of 0 dB for its short fits: a check of
the pipeline, not a result), the one the tests run end to end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..zoo.folder import atomic_write_text
from . import classify, editing, represent
from .generate import INRZooSpec, generate


@dataclass(frozen=True)
class Size:
    """How big each step is: the image dataset, INRs per image and per sine zoo, fitting steps
    per INR and the PSNR floor, seeds, and training epochs of each experiment (by name; the
    diverse zoos' larger graphs get fewer, as in ``docs/results_inr.md``)."""

    images: str
    image_signals: int
    sine_signals: int
    members: int
    steps: int
    psnr_floor: float
    seeds: int
    epochs: dict[str, int]


_FULL_EPOCHS = {"classify_standard": 20, "classify_diverse": 20, "edit_dilate_standard": 30,
                "edit_contrast_standard": 30, "edit_dilate_diverse": 10, "represent_standard": 12,
                "represent_diverse": 6}
SIZES = {
    "full": Size(images="mnist", image_signals=1280, sine_signals=2560, members=64, steps=200, psnr_floor=20.0,
                 seeds=3, epochs=_FULL_EPOCHS),
    "small": Size(images="digits", image_signals=32, sine_signals=32, members=8, steps=30, psnr_floor=0.0, seeds=2,
                  epochs=dict.fromkeys(_FULL_EPOCHS, 2)),
}
ZOOS = {  # name: (dataset, setting); "images" is the size's image dataset
    "images_standard": ("images", "standard"), "images_diverse": ("images", "diverse"),
    "sine_standard": ("sine", "standard"), "sine_diverse": ("sine", "diverse"),
}


@dataclass(frozen=True)
class Experiment:
    """One results file: a task on a zoo, with its methods and splits."""

    name: str
    zoo: str
    methods: tuple[str, ...]
    splits: tuple[str, ...]
    edit: str = ""


EXPERIMENTS = (
    Experiment("classify_standard", "images_standard", tuple(classify.METHODS), ("random",)),
    Experiment("classify_diverse", "images_diverse", ("rendered", "mlp", "deepsets", "statnn", "gmn"), ("random", "ood")),
    Experiment("edit_dilate_standard", "images_standard", tuple(editing.METHODS), ("random",), "dilate"),
    Experiment("edit_contrast_standard", "images_standard", tuple(editing.METHODS), ("random",), "contrast"),
    Experiment("edit_dilate_diverse", "images_diverse", ("identity", "mlp", "gmn"), ("random", "ood"), "dilate"),
    Experiment("represent_standard", "sine_standard", tuple(represent.METHODS), ("random",)),
    Experiment("represent_diverse", "sine_diverse", tuple(m for m in represent.METHODS if not m.startswith("nfn")),
               ("random", "ood")),
)


def make_zoos(out: Path, size: Size, log=None) -> dict[str, Path]:
    """Generate (or resume) the four zoos under ``out/zoos``."""
    folders = {}
    for name, (dataset, setting) in ZOOS.items():
        folders[name] = out / "zoos" / name
        images = dataset == "images"
        spec = INRZooSpec(setting=setting, dataset=size.images if images else dataset,
                          signals=size.image_signals if images else size.sine_signals, members=size.members,
                          steps=size.steps, psnr_floor=size.psnr_floor)
        generate(folders[name], spec, log=log)
    return folders


def _run(exp: Experiment, size: Size, zoo: str, pictures: str, log) -> list[dict]:
    """The experiment's records (an editing experiment also writes its sample ``pictures``)."""
    methods, splits, epochs = list(exp.methods), list(exp.splits), size.epochs[exp.name]
    if exp.name.startswith("classify"):
        return classify.run(zoo, methods, splits, size.seeds, epochs, log=log)
    if exp.name.startswith("edit"):
        return editing.run(zoo, exp.edit, methods, splits, size.seeds, epochs, log=log, pictures=pictures)
    return represent.run(zoo, methods, splits, size.seeds, epochs, log=log)


def _table(exp: Experiment) -> Callable[[list[dict]], str]:
    if exp.name.startswith("classify"):
        return classify.markdown_table
    return editing.markdown_table if exp.name.startswith("edit") else represent.markdown_table


def run_experiments(out: Path, size: Size, folders: dict[str, Path], log=None) -> list[str]:
    """Run every experiment whose results file is missing; returns the report's sections."""
    sections = []
    (out / "results").mkdir(parents=True, exist_ok=True)
    for exp in EXPERIMENTS:
        path = out / "results" / f"{exp.name}.json"
        if not path.exists():
            start = time.perf_counter()
            records = _run(exp, size, str(folders[exp.zoo]), str(out / "results" / f"{exp.name}.png"), log)
            atomic_write_text(path, json.dumps(records, indent=1) + "\n")
            if log:
                print(f"{exp.name}: {time.perf_counter() - start:.0f} s", file=log, flush=True)
        records = json.loads(path.read_text())
        picture = f"\n![{exp.name}](results/{exp.name}.png)\n" if exp.edit else ""
        sections.append(f"## {exp.name} ({exp.zoo}, {size.epochs[exp.name]} epochs, {size.seeds} seeds)\n\n"
                        f"{_table(exp)(records)}\n{picture}")
    return sections


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gmn_models.inr.reproduce",
                                description="Every INR task of issue 13: zoos, classification, editing, representations.")
    p.add_argument("--out", required=True, help="output folder (created or resumed)")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--threads", type=int, default=0, help="torch (and OpenMP) threads (0: leave as is)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = None if args.quiet else sys.stderr
    out, size = Path(args.out), SIZES[args.size]
    try:
        out.mkdir(parents=True, exist_ok=True)
        folders = make_zoos(out, size, log)
        sections = run_experiments(out, size, folders, log)
    except (ValueError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = f"# INR tasks, size {args.size}\n\n" + "\n".join(sections)
    atomic_write_text(out / "report.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
