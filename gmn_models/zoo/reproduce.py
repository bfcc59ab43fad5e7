"""The whole accuracy-prediction experiment in one command: generate (or resume) the zoo, then
run every method on every split over the seeds and write the report.

    python -m gmn_models.zoo.reproduce --out results_full --size full --workers 2

writes ``<out>/zoo`` (the model folder, see :mod:`gmn_models.zoo.folder`) and, next to it, the
files of :func:`gmn_models.zoo.report.write_report` (``table.md``, ``records.csv``,
``predictions.csv``, ``scatter_*.png``). Rerunning resumes both: finished zoo chunks and
finished experiment jobs (``<out>/jobs``, one record per method, split and seed) are kept.
``--size small`` runs it on 320 networks (about 20 min on 2 cores, mostly the GMN): enough to
check the pipeline, too few to compare methods.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import experiment, generate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gmn_models.zoo.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (the zoo goes to <out>/zoo)")
    p.add_argument("--size", choices=["small", "full"], default="full")
    p.add_argument("--chunks", type=int, help="override the preset's number of chunks")
    p.add_argument("--members", type=int, help="override the preset's networks per chunk")
    p.add_argument("--splits", default=",".join(experiment.SPLITS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="processes for zoo training and for the experiment")
    p.add_argument("--methods", default=None, help="comma-separated (default: all)")
    p.add_argument("--gmn", action="append", default=[], metavar="KEY=VALUE", help="GMN hyperparameter")
    args = p.parse_args(argv)
    zoo = os.path.join(args.out, "zoo")
    gen_args = ["--out", zoo, "--size", args.size, "--workers", str(max(1, args.workers))]
    for flag, value in (("--chunks", args.chunks), ("--members", args.members)):
        if value is not None:
            gen_args += [flag, str(value)]
    code = generate.main(gen_args)
    if code:
        return code
    exp_args = ["--zoo", zoo, "--seeds", str(args.seeds), "--splits", args.splits, "--out", args.out,
                "--workers", str(args.workers)]
    if args.methods:
        exp_args += ["--methods", args.methods]
    for item in args.gmn:
        exp_args += ["--gmn", item]
    print(f"running the experiment on {zoo}", file=sys.stderr)
    return experiment.main(exp_args)


if __name__ == "__main__":
    raise SystemExit(main())
