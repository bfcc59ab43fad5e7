"""Generate an INR zoo in the model-folder format: one fitted INR per signal.

    python -m gmn_models.inr.generate --out inr_std --setting standard --size full --workers 2
    python -m gmn_models.inr.generate --out inr_div --setting diverse --size small

Settings (:func:`chunk_arch`): ``standard`` — every INR is SIREN 2 -> 32 -> 32 -> 1, ω0 = 30 (the
DWSNets / NFN recipe); ``diverse`` — per chunk an architecture drawn from the zoo seed: ``depth``
2-5 hidden layers, ``width`` 16-64, activation sine (ω0 10 or 30) or ReLU / GELU after random
Fourier features (scale 1.5), with or without LayerNorm. Sine INRs are fitted with Adam at
``lr``, the others at ``rff_lr`` (ReLU / GELU INRs fit far worse at the sine rate).

Chunk ``i`` fits signals ``i*members ...`` of the dataset together (:func:`~.fit.fit_group`) and
is written atomically as the classifier zoo's chunks are (:mod:`gmn_models.zoo.generate`:
``models/chunk_NNNNN/``, ``chunks/chunk_NNNNN.sha256``, then the ``chunks/chunk_NNNNN.csv``
"done" marker; ``models.csv`` and ``manifest.sha256`` rewritten after each chunk; a rerun
resumes). INRs whose PSNR is below the spec's ``psnr_floor`` are not saved; the chunk's CSV
lists only the saved ones and ``timing.jsonl`` counts the refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from ..model_folder import RESERVED_COLUMNS, reserved_cells
from ..zoo import folder as zfolder
from ..zoo.folder import atomic_write_text, rows_to_csv, sha256_file
from ..zoo.generate import chunk_name, finalize, prepare_folder, run_chunks
from . import data as idata
from .families import STANDARD
from .fit import fit_group

BUILDER = "gmn_models.inr.families:inr"
SETTINGS = ("standard", "diverse")
SIZES = {"small": 256, "full": 5000}  # signals
ARCH_COLUMNS = ("width", "depth", "activation", "w0", "layer_norm", "fourier")
COLUMNS = (*RESERVED_COLUMNS, "label", "amplitude", "phase", "psnr", "setting", "dataset", *ARCH_COLUMNS,
           "signal", "n_params", "chunk", "member")


@dataclass(frozen=True)
class INRZooSpec:
    """Everything that determines an INR zoo (stored as ``zoo.json``)."""

    setting: str = "standard"
    dataset: str = "mnist"
    signals: int = 256
    members: int = 64
    steps: int = 200
    lr: float = 1e-3
    rff_lr: float = 3e-3
    psnr_floor: float = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"unknown INR setting {self.setting!r}; expected one of {list(SETTINGS)}")
        if self.dataset not in idata.DATASETS:
            raise ValueError(f"unknown INR dataset {self.dataset!r}; expected one of {list(idata.DATASETS)}")

    @property
    def chunks(self) -> int:
        return -(-self.signals // self.members)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def chunk_arch(spec: INRZooSpec, index: int, in_features: int) -> dict:
    """The builder kwargs of chunk ``index`` (module docstring)."""
    if spec.setting == "standard":
        return {**STANDARD, "in_features": in_features}
    rng = np.random.default_rng([spec.seed, index, 13])
    activation = str(rng.choice(["sine", "sine", "relu", "gelu"]))
    kwargs = {"in_features": in_features, "out_features": 1, "width": int(rng.choice([16, 24, 32, 48, 64])),
              "depth": int(rng.integers(2, 6)), "activation": activation, "layer_norm": bool(rng.integers(2))}
    if activation == "sine":
        kwargs["w0"] = float(rng.choice([10.0, 30.0]))
    else:
        kwargs.update(fourier=True, fourier_scale=1.5)
    return kwargs


def _value_range(signals: idata.Signals) -> float:
    return float(signals.targets.max() - signals.targets.min()) or 1.0


def run_chunk(folder: str | os.PathLike, spec: INRZooSpec, index: int) -> dict:
    """Fit chunk ``index`` and write it atomically into ``folder``; returns its timing record."""
    folder = Path(folder)
    signals = idata.load(spec.dataset, spec.signals, spec.seed)
    lo, hi = index * spec.members, min(spec.signals, (index + 1) * spec.members)
    part = signals.subset(np.arange(lo, hi))
    kwargs = chunk_arch(spec, index, signals.coords.shape[1])
    seeds = [int(np.random.SeedSequence([spec.seed, index, j]).generate_state(1)[0]) for j in range(hi - lo)]
    start, cpu_start = time.perf_counter(), time.process_time()
    lr = spec.lr if kwargs["activation"] == "sine" else spec.rff_lr
    results = fit_group(kwargs, seeds, signals.coords, part.targets, spec.steps, lr, _value_range(signals))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    name = chunk_name(index)
    final, tmp = folder / "models" / name, folder / "models" / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows, hashes = [], {}
    arch = {c: kwargs.get(c, False if c in ("layer_norm", "fourier") else None) for c in ARCH_COLUMNS}
    for j, res in enumerate(results):
        if res.psnr < spec.psnr_floor:
            continue
        fname = f"inr{j:03d}.safetensors"
        rel = f"models/{name}/{fname}"
        save_file(res.state_dict, str(tmp / fname), metadata={"builder": BUILDER})
        hashes[rel] = sha256_file(tmp / fname)
        labels = {k: float(v[j]) if v.dtype.kind == "f" else int(v[j]) for k, v in part.labels.items()}
        rows.append({**reserved_cells(rel, BUILDER, kwargs, [2, signals.coords.shape[1]]), **labels,
                     "psnr": round(res.psnr, 3), "setting": spec.setting, "dataset": spec.dataset, **arch,
                     "signal": lo + j,
                     "n_params": sum(v.numel() for v in res.state_dict.values()), "chunk": index, "member": j})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    (folder / "chunks").mkdir(exist_ok=True)
    atomic_write_text(folder / "chunks" / f"{name}.sha256", "".join(f"{h}  {p}\n" for p, h in sorted(hashes.items())))
    atomic_write_text(folder / "chunks" / f"{name}.csv", rows_to_csv(rows, COLUMNS))
    return {"chunk": index, "arch": kwargs, "fitted": len(results), "saved": len(rows),
            "refused": len(results) - len(rows), "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3)}


def load_rows(folder: str | os.PathLike) -> list[dict]:
    """Typed rows of an INR zoo's ``models.csv`` (numbers parsed, ``builder_kwargs`` decoded),
    each with the folder as ``root``."""
    rows = zfolder.load_rows(folder)
    for r in rows:
        for key in ("label", "signal"):
            r[key] = None if r.get(key) is None else int(r[key])
        for key in ("amplitude", "phase", "psnr", "w0"):
            r[key] = None if r.get(key) is None else float(r[key])
    return rows


def _run_in_worker(folder: str, spec_json: dict, index: int) -> dict:
    return run_chunk(folder, INRZooSpec(**spec_json), index)


def generate(folder: str | os.PathLike, spec: INRZooSpec, workers: int = 1, max_chunks: int | None = None,
             log=None) -> dict:
    """Generate (or resume) the INR zoo ``spec`` in ``folder``; at most ``max_chunks`` new
    chunks this call (here with torch's threads as they are, or in ``workers`` processes of one
    thread each). Returns ``{"done", "skipped", "rows", "timings"}``."""
    folder = Path(folder)
    prepare_folder(folder, spec.to_json(), "an INR zoo")
    return run_chunks(folder, spec.chunks, max_chunks, lambda i: run_chunk(folder, spec, i), _run_in_worker,
                      (str(folder), spec.to_json()), lambda: finalize(folder, spec, COLUMNS),
                      lambda t: f"chunk {t['chunk']:4d} saved {t['saved']}/{t['fitted']} {t['seconds']:.1f}s",
                      workers, None, log)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gmn_models.inr.generate",
                                description="Generate (or resume) an INR zoo in the model-folder format.")
    p.add_argument("--out", required=True, help="zoo folder (created or resumed)")
    p.add_argument("--setting", choices=SETTINGS, default="standard")
    p.add_argument("--dataset", choices=idata.DATASETS, default="mnist")
    p.add_argument("--size", choices=sorted(SIZES), default="small", help="small: 256 signals, full: 5,000")
    p.add_argument("--signals", type=int, help="override the size's number of signals")
    p.add_argument("--steps", type=int, default=INRZooSpec.steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-chunks", type=int, help="stop after this many new chunks (resume later)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        spec = INRZooSpec(setting=args.setting, dataset=args.dataset, signals=args.signals or SIZES[args.size],
                          steps=args.steps, seed=args.seed)
        out = generate(args.out, spec, workers=args.workers, max_chunks=args.max_chunks,
                       log=None if args.quiet else sys.stderr)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    refused = sum(t["refused"] for t in out["timings"])
    print(f"{args.out}: {out['rows']} INRs ({out['done']} chunks fitted, {out['skipped']} already done, "
          f"{refused} below the PSNR floor of {spec.psnr_floor} dB not saved)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
