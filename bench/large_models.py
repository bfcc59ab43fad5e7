"""Full-size language models: compile, save, load and round trip under schema v2.

    pip install -e ".[heavy]" && python bench/large_models.py                 # GPT-2 small
    python bench/large_models.py --model llama-1b                               # ~1.1B parameters

Models are built from ``transformers`` configs with random weights (nothing is downloaded):
``gpt2-small`` is ``GPT2LMHeadModel(GPT2Config())`` (124M parameters); ``llama-1b`` is a
``LlamaForCausalLM`` of TinyLlama's shape (hidden 2048, 22 layers, 32 query and 4 key/value
heads, MLP 5632, vocabulary 32000: 1.1B parameters, 4.1 GiB of float32), built once in float32
and never copied. The example input is 8 token ids. Each phase runs in a fresh process, so its
peak RSS (``ru_maxrss``) is its own:

1. *compile*: build the model, trace, lower to the compact graph, write the graph file;
2. *round trip*: load the graph file (a memory map), read every edge's value, decompile them
   into a state dict and compare it with the stored weights bit for bit;
3. *in place*: build and compile the model, read every edge's value and decompile them
   straight into the model's own tensors (``ParameterGraph.write_into``), compared by checksums
   taken before.

Printed against the goals of issue 16 (set for GPT-2 small), as ratios to the parameter bytes:
compile peak <= 3x, file <= 1.3x, compile <= 10 s, round trip peak (above the interpreter and
its imports) <= 2x. What the same graph costs as schema-v1 per-edge tensors (56 bytes per
edge) is printed beside them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

GOALS = {"compile_s": 10.0, "compile_peak": 3.0, "file": 1.3, "round_trip_peak": 2.0}
V1_BYTES_PER_EDGE = 56


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _resident_mib() -> dict[str, float]:
    """Current anonymous and file-backed resident memory (Linux ``/proc/self/status``)."""
    found = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                found[key] = int(rest.split()[0]) / 1024
    return found


def build(name: str):
    """The model ``name`` with random weights, in eval mode."""
    import torch
    import transformers

    torch.manual_seed(0)
    if name == "gpt2-small":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(use_cache=False)).eval()
    config = transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                      num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                      use_cache=False)
    return transformers.LlamaForCausalLM(config).eval()


def _compile_phase(name: str, path: str, seq: int) -> dict:
    import torch
    import transformers

    import gmn_compiler as gc

    model = build(name)
    ids = torch.randint(0, model.config.vocab_size, (1, seq))
    rss_model = _rss_mib()
    start = time.perf_counter()
    pg = gc.compile(model, (ids,))
    compiled = time.perf_counter()
    pg.save(path)
    saved = time.perf_counter()
    return {"params": sum(p.numel() for p in model.parameters()),
            "param_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
            "nodes": pg.num_nodes, "edges": pg.num_edges, "blocks": len(pg.blocks.blocks),
            "rss_model": rss_model, "compile_s": compiled - start, "save_s": saved - compiled,
            "peak": _rss_mib(), "file_mib": os.path.getsize(path) / 2**20,
            "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                        f"{torch.get_num_threads()} threads"}


def _round_trip_phase(path: str) -> dict:
    import torch

    import gmn_compiler as gc
    import gmn_compiler.graph  # noqa: F401 (its imports, torch_geometric's among them, are not the load)

    rss_start = _rss_mib()
    anon_start = _resident_mib()["RssAnon"]
    start = time.perf_counter()
    pg = gc.load(path)
    loaded = time.perf_counter()
    rss_loaded = _rss_mib()
    values = pg.edge_values()
    state = pg.to_state_dict(values)
    done = time.perf_counter()
    peak = _rss_mib()  # before the comparison, which reads every stored weight from the file
    resident = _resident_mib()
    del values
    exact = all(torch.equal(state[p.name], source) for p, source in zip(pg.params, pg.blocks.sources))
    return {"load_s": loaded - start, "round_trip_s": done - loaded, "rss_start": rss_start,
            "rss_loaded": rss_loaded, "anon_start": anon_start, "peak": peak, "exact": exact, **resident}


def _fingerprint(tensors) -> list[int]:
    """A bitwise checksum per tensor (sum of its 32-bit words), to compare without a copy."""
    import torch

    return [int(t.detach().reshape(-1).view(torch.int32).sum(dtype=torch.int64)) for t in tensors]


def _in_place_phase(name: str, seq: int) -> dict:
    import torch

    import gmn_compiler as gc

    model = build(name)
    ids = torch.randint(0, model.config.vocab_size, (1, seq))
    before = _fingerprint(model.state_dict().values())
    rss_model = _rss_mib()
    anon_model = _resident_mib()["RssAnon"]
    pg = gc.compile(model, (ids,))
    start = time.perf_counter()
    values = pg.edge_values()
    pg.write_into(model, values)
    done = time.perf_counter()
    peak, resident = _rss_mib(), _resident_mib()
    return {"round_trip_s": done - start, "rss_model": rss_model, "peak": peak,
            "anon_model": anon_model, "anon": resident["RssAnon"],
            "exact": _fingerprint(model.state_dict().values()) == before}


def _run_phase(name: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _verdict(value: float, goal: float) -> str:
    return f"goal <= {goal:g}: {'PASS' if value <= goal else 'MISS'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["gpt2-small", "llama-1b"], default="gpt2-small")
    parser.add_argument("--seq", type=int, default=8, help="tokens in the example input")
    parser.add_argument("--phase", choices=["compile", "round_trip", "in_place"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "compile":
        print(json.dumps(_compile_phase(args.model, args.path, args.seq)))
        return
    if args.phase == "round_trip":
        print(json.dumps(_round_trip_phase(args.path)))
        return
    if args.phase == "in_place":
        print(json.dumps(_in_place_phase(args.model, args.seq)))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{args.model}.safetensors")
        c = _run_phase("compile", "--path", path, "--seq", str(args.seq), "--model", args.model)
        r = _run_phase("round_trip", "--path", path)
        w = _run_phase("in_place", "--seq", str(args.seq), "--model", args.model)
    p = c["param_mib"]
    print(f"# {args.model}, {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, {c['versions']}")
    print(f"parameters              {c['params']:,} ({p:.0f} MiB)")
    print(f"graph                   {c['nodes']:,} nodes, {c['edges']:,} edges, {c['blocks']:,} blocks")
    print(f"compile s               {c['compile_s']:.2f}   {_verdict(c['compile_s'], GOALS['compile_s'])}")
    print(f"save s                  {c['save_s']:.2f}")
    print(f"compile peak RSS MiB    {c['peak']:.0f} (model built: {c['rss_model']:.0f}) = "
          f"{c['peak'] / p:.2f}x parameter bytes   {_verdict(c['peak'] / p, GOALS['compile_peak'])}")
    print(f"file MiB                {c['file_mib']:.0f} = {c['file_mib'] / p:.3f}x parameter bytes   "
          f"{_verdict(c['file_mib'] / p, GOALS['file'])}")
    print(f"  schema v1 per-edge    {c['edges'] * V1_BYTES_PER_EDGE / 2**20:.0f} MiB = "
          f"{c['edges'] * V1_BYTES_PER_EDGE / 2**20 / p:.1f}x")
    print(f"load s                  {r['load_s']:.2f} (RSS {r['rss_start']:.0f} -> {r['rss_loaded']:.0f} MiB)")
    print(f"round trip s            {r['round_trip_s']:.2f}, bit-exact: {r['exact']}")
    extra = r["peak"] - r["rss_start"]
    print(f"round trip peak RSS MiB {r['peak']:.0f}; above the interpreter and imports {extra:.0f} = "
          f"{extra / p:.2f}x parameter bytes   {_verdict(extra / p, GOALS['round_trip_peak'])}")
    anon = r["RssAnon"] - r["anon_start"]
    print(f"  of which anonymous    {anon:.0f} = {anon / p:.2f}x (the edge values, 4 bytes x "
          f"{c['edges']:,} = {c['edges'] * 4 / 2**20 / p:.2f}x, and the state dict, 1x); file pages "
          f"{r['RssFile']:.0f} (the weights read through the memory map, and the libraries)")
    extra = w["peak"] - w["rss_model"]
    print(f"in place s              {w['round_trip_s']:.2f} (compile, edge_values, write_into the model), "
          f"bit-exact (checksums): {w['exact']}")
    print(f"in place peak above the built model {extra:.0f} MiB = {extra / p:.2f}x parameter bytes "
          f"(anonymous {(w['anon'] - w['anon_model']) / p:.2f}x)   {_verdict(extra / p, GOALS['round_trip_peak'])}")


if __name__ == "__main__":
    main()
