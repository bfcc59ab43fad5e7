"""Data-parallel training under torchrun: two CPU processes (gloo) train in lockstep, end with
identical weights, and rank 0 alone writes the outputs."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from test_gmn_datasets import make_model_folder

# Run by each rank: trains from the config, then records its final weights and every attempt to
# open a file for writing under the output directory (rank 1 must make none).
RANK_SCRIPT = textwrap.dedent("""
    import builtins, io, os, sys
    import torch

    config, out, record = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
    rank = int(os.environ["RANK"])
    writes = []

    def inside_out(path):
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(out)

    def watch(real, writing):
        def opener(path, *args, **kwargs):
            if inside_out(path) and writing(args, kwargs):
                writes.append(os.fspath(path))
            return real(path, *args, **kwargs)
        return opener

    def text_mode(args, kwargs):
        return any(c in (args[0] if args else kwargs.get("mode", "r")) for c in "wax+")

    def os_flags(args, kwargs):
        return bool((args[0] if args else kwargs.get("flags", 0)) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

    if rank != 0:
        builtins.open = io.open = watch(io.open, text_mode)
        os.open = watch(os.open, os_flags)

    from gmn_models.train_cli import load_config
    from gmn_models.training import train

    result = train(load_config(config))
    torch.save({"model": result.model.state_dict(), "writes": writes, "history": result.history,
                "world": int(os.environ["WORLD_SIZE"])}, os.path.join(record, f"rank{rank}.pt"))
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(240)
def test_two_processes_train_in_lockstep(tmp_path):
    zoo = make_model_folder(tmp_path / "zoo", n_mlp=8, n_cnn=0)
    out = tmp_path / "run"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "dataset": str(zoo), "out": str(out), "label_columns": "scale", "split": [0.5, 0.25, 0.25],
        "epochs": 3, "hidden": 8, "num_blocks": 1, "lr": 0.01, "batch_size": 2, "dropout": 0.1,
        "compile_workers": 0, "progress": False}))
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for _ in range(3):  # the probed port may be taken by another process before torchrun binds it
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                   f"--master_port={_free_port()}", "--master_addr=127.0.0.1", str(script),
                   str(config), str(out), str(tmp_path)]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=220)
        if proc.returncode == 0 or "EADDRINUSE" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-6000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[1]["writes"] == []  # rank 1 writes nothing under the output directory
    weights0, weights1 = ranks[0]["model"], ranks[1]["model"]
    assert weights0.keys() == weights1.keys()
    for name in weights0:
        assert torch.equal(weights0[name], weights1[name]), name
    # losses are all-reduced and every rank evaluates the full validation split: same log
    untimed = [[{k: v for k, v in row.items() if k != "time_s"} for row in r["history"]] for r in ranks]
    assert len(untimed[0]) == 3 and untimed[0] == untimed[1]
    # the model trained: its weights moved away from the seeded initialisation
    torch.manual_seed(0)
    from gmn_models.model import GMN

    init = GMN(hidden=8, num_blocks=1, graph_out=1, edge_out=0, dropout=0.1).state_dict()
    assert any(not torch.equal(init[k], weights0[k]) for k in init)
    with open(out / "log.csv") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 3
    assert {"checkpoint.pt", "best.pt", "learning_curves.png", "predictions.png"} <= set(os.listdir(out))
