"""Public weight-zoo loaders (gmn_models.public_zoos) on small files written here in the zoos' formats.

TensorFlow is not installed, so the "TF convention" of the Small CNN Zoo is checked against a
numpy reimplementation of Keras's ``Conv2D`` (NHWC input, HWIO kernel, ``padding="valid"``,
stride 2) run on the raw TF-layout arrays, independently of the loader's transposes.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import gmn_compiler as gc
from gmn_compiler import schema
from gmn_models import public_zoos as pz
from gmn_models.builders import get_builder

KERAS_NAMES = ["sequential/conv2d", "sequential/conv2d_1", "sequential/conv2d_2", "sequential/dense"]
TORCH_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh, "selu": nn.SELU, "sigmoid": nn.Sigmoid}


# ----------------------------------------------------------------------------- Small CNN Zoo files
def reference_cnn(seed: int, activation: str = "relu") -> nn.Sequential:
    """The zoo architecture written independently of the loader: 3 x (conv 3x3/2, act), GAP, dense."""
    torch.manual_seed(seed)
    act = TORCH_ACT[activation]
    model = nn.Sequential(nn.Conv2d(1, 16, 3, 2), act(), nn.Conv2d(16, 16, 3, 2), act(),
                          nn.Conv2d(16, 16, 3, 2), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    return model.eval()


def tf_tensors(model: nn.Sequential) -> list[tuple[str, np.ndarray]]:
    """Keras variables in Keras order: OIHW -> HWIO conv kernels, [out, in] -> [in, out] dense."""
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    dense = model[-1]
    out = []
    for name, conv in zip(KERAS_NAMES, convs):
        out.append((f"{name}/kernel:0", conv.weight.detach().permute(2, 3, 1, 0).numpy()))
        out.append((f"{name}/bias:0", conv.bias.detach().numpy()))
    out.append((f"{KERAS_NAMES[3]}/kernel:0", dense.weight.detach().T.numpy()))
    out.append((f"{KERAS_NAMES[3]}/bias:0", dense.bias.detach().numpy()))
    return out


def write_zoo(folder: Path, models: list[nn.Sequential], metrics: list[dict], *,
              layout_style: str = "pandas_shuffled", nan_rows: tuple[int, ...] = ()) -> Path:
    """Write weights.npy / layout.csv / metrics.csv.gz as the public release lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    per_model = [tf_tensors(m) for m in models]
    rows = np.stack([np.concatenate([a.reshape(-1) for _, a in t]) for t in per_model]).astype(np.float32)
    for r in nan_rows:
        rows[r, 5] = np.nan
    np.save(folder / "weights.npy", rows)
    layout, start = [], 0
    for name, array in per_model[0]:
        layout.append({"varname": name, "start_idx": start, "end_idx": start + array.size,
                       "size": array.size, "shape": str(tuple(array.shape))})
        start += array.size
    with open(folder / "layout.csv", "w", newline="") as handle:
        if layout_style == "pandas_shuffled":  # pandas' to_csv: unnamed index column; any row order
            order = [3, 0, 7, 1, 5, 2, 6, 4]
            writer = csv.writer(handle)
            writer.writerow(["", "varname", "start_idx", "end_idx", "size", "shape"])
            for i in order:
                row = layout[i]
                writer.writerow([i, row["varname"], row["start_idx"], row["end_idx"], row["size"], row["shape"]])
        else:  # minimal: the four required columns in order
            writer = csv.DictWriter(handle, fieldnames=["varname", "start_idx", "end_idx", "shape"],
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows(layout)
    with gzip.open(folder / "metrics.csv.gz", "wt", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(metrics[0]))
        writer.writeheader()
        writer.writerows(metrics)
    return folder


def zoo_metrics(activation: str, step: int, acc: float, dataset: str = "mnist") -> dict:
    return {"config.activation": activation, "config.dataset": dataset, "config.dropout": 0.0,
            "config.learning_rate": 0.01, "modeldir": f"/tmp/run_{acc}", "step": step,
            "test_accuracy": acc, "test_loss": 1.5, "train_accuracy": acc + 0.01, "train_loss": 1.4}


def numpy_keras_forward(tensors: list[tuple[str, np.ndarray]], x_nhwc: np.ndarray, activation: str) -> np.ndarray:
    """Keras semantics in float64: Conv2D(3, strides=2, padding='valid') on NHWC with HWIO kernels,
    activation, GlobalAveragePooling2D, Dense with an [in, out] kernel."""
    acts = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh,
            "selu": lambda v: 1.0507009873554805 * np.where(v > 0, v, 1.6732632423543772 * np.expm1(v))}
    t = {name: a.astype(np.float64) for name, a in tensors}
    h = x_nhwc.astype(np.float64)
    for name in KERAS_NAMES[:3]:
        k, b = t[f"{name}/kernel:0"], t[f"{name}/bias:0"]
        kh, kw, _, cout = k.shape
        oh, ow = (h.shape[1] - kh) // 2 + 1, (h.shape[2] - kw) // 2 + 1
        out = np.zeros((h.shape[0], oh, ow, cout))
        for i in range(kh):
            for j in range(kw):
                out += h[:, i:i + 2 * oh:2, j:j + 2 * ow:2, :] @ k[i, j]
        h = acts[activation](out + b)
    return h.mean(axis=(1, 2)) @ t[f"{KERAS_NAMES[3]}/kernel:0"] + t[f"{KERAS_NAMES[3]}/bias:0"]


def load_model_folder(folder: Path) -> list[tuple[nn.Module, dict]]:
    """A consumer of the model folder contract, written from its description only: the builder
    is the registered one of that name (gmn_models.builders), never an import of the string."""
    with open(folder / "models.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for row in rows:
        model = get_builder(row["builder"])(**json.loads(row["builder_kwargs"]))
        model.load_state_dict(load_file(str(folder / row["path"])), strict=True)
        out.append((model.eval(), row))
    return out


# ----------------------------------------------------------------------------- Small CNN Zoo tests
@pytest.mark.parametrize("layout_style", ["pandas_shuffled", "minimal"])
def test_small_cnn_zoo_loads_the_tf_layout_exactly(tmp_path, layout_style):
    refs = [reference_cnn(0, "relu"), reference_cnn(1, "tanh"), reference_cnn(2, "selu")]
    metrics = [zoo_metrics(a, 86, acc) for a, acc in [("relu", 0.5), ("tanh", 0.25), ("selu", 0.75)]]
    folder = write_zoo(tmp_path / "mnist", refs, metrics, layout_style=layout_style)
    loaded = list(pz.load_small_cnn_zoo(folder))
    assert len(loaded) == 3
    x = torch.randn(4, 1, 28, 28)
    for i, (ref, (model, m)) in enumerate(zip(refs, loaded)):
        assert isinstance(model, pz.SmallCNN) and not model.training
        assert model.activation == metrics[i]["config.activation"]
        ref_params = [p for p in ref.parameters()]
        for name, expected in zip(["convs.0.weight", "convs.0.bias", "convs.1.weight", "convs.1.bias",
                                   "convs.2.weight", "convs.2.bias", "dense.weight", "dense.bias"], ref_params):
            assert torch.equal(model.state_dict()[name], expected.detach()), name
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-6)
        assert m["test_accuracy"] == metrics[i]["test_accuracy"] and m["step"] == 86
        assert m["config.activation"] == metrics[i]["config.activation"] and m["weights_row"] == i
    assert sum(p.numel() for p in loaded[0][0].parameters()) == 4970  # the published count


@pytest.mark.parametrize("activation", ["relu", "tanh", "selu"])
def test_small_cnn_zoo_matches_a_numpy_keras_forward(tmp_path, activation):
    ref = reference_cnn(3, activation)
    folder = write_zoo(tmp_path / "z", [ref], [zoo_metrics(activation, 86, 0.5)])
    model, _ = next(pz.load_small_cnn_zoo(folder))
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 28, 28, 1)).astype(np.float32)
    expected = numpy_keras_forward(tf_tensors(ref), x, activation)
    got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # one first-layer output by hand: position (0, 0), every filter, as TF defines it
    kernel, bias = tf_tensors(ref)[0][1], tf_tensors(ref)[1][1]
    by_hand = [sum(float(x[0, i, j, 0]) * float(kernel[i, j, 0, o]) for i in range(3) for j in range(3))
               + float(bias[o]) for o in range(16)]
    conv0 = model.convs[0](torch.from_numpy(x).permute(0, 3, 1, 2))[0, :, 0, 0]
    np.testing.assert_allclose(conv0.detach().numpy(), by_hand, rtol=0, atol=1e-5)


def test_small_cnn_zoo_selection(tmp_path):
    refs = [reference_cnn(s) for s in range(5)]
    metrics = [zoo_metrics("relu", step, 0.1 * i) for i, step in enumerate([0, 86, 86, 86, 86])]
    folder = write_zoo(tmp_path / "z", refs, metrics, nan_rows=(2,))
    rows = lambda **kw: [m["weights_row"] for _, m in pz.load_small_cnn_zoo(folder, **kw)]  # noqa: E731
    assert rows() == [0, 1, 3, 4]  # the NaN row (a diverged run) is skipped by default
    assert rows(skip_nonfinite=False) == [0, 1, 2, 3, 4]
    assert rows(steps={86}) == [1, 3, 4]
    assert rows(steps={86}, limit=2) == [1, 3]
    model, _ = next(pz.load_small_cnn_zoo(folder, activation="tanh"))
    assert model.activation == "tanh"


def test_small_cnn_zoo_to_model_folder_round_trips_and_compiles(tmp_path):
    refs = [reference_cnn(0, "relu"), reference_cnn(1, "tanh")]
    metrics = [zoo_metrics("relu", 86, 0.5, "cifar10"), zoo_metrics("tanh", 86, 0.25, "cifar10")]
    folder = write_zoo(tmp_path / "cifar10", refs, metrics)
    table = pz.small_cnn_zoo_to_model_folder(folder, tmp_path / "out")
    assert table == tmp_path / "out" / "models.csv"
    with open(table, newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:6] == ["path", "builder", "builder_kwargs", "input_shape", "test_acc", "weights_row"]
    assert "config.activation" in header and "test_accuracy" in header
    built = load_model_folder(tmp_path / "out")
    assert [float(r["test_acc"]) for _, r in built] == [0.5, 0.25]
    assert [r["config.activation"] for _, r in built] == ["relu", "tanh"]
    x = torch.randn(2, 1, 32, 32)
    for (model, row), ref in zip(built, refs):
        assert row["builder"] == "gmn_models.public_zoos:SmallCNN"
        assert json.loads(row["input_shape"]) == [1, 1, 32, 32]
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-6)
    model, row = built[1]
    pg = gc.compile(model, (torch.randn(json.loads(row["input_shape"])),))
    state = pg.to_state_dict(pg.data.edge_attr[:, 0])
    stored = load_file(str(tmp_path / "out" / row["path"]))
    assert set(state) == set(stored)
    assert all(torch.equal(state[k], stored[k]) for k in stored)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pz.small_cnn_zoo_to_model_folder(folder, tmp_path / "out")
    pz.small_cnn_zoo_to_model_folder(folder, tmp_path / "out", limit=1, overwrite=True)
    assert len(load_model_folder(tmp_path / "out")) == 1


def _break(folder: Path, what: str) -> None:
    if what == "missing layout":
        (folder / "layout.csv").unlink()
    elif what == "row length":
        rows = np.load(folder / "weights.npy")
        np.save(folder / "weights.npy", np.concatenate([rows, rows[:, :1]], axis=1))
    elif what == "metrics rows":
        with gzip.open(folder / "metrics.csv.gz", "rt") as handle:
            lines = handle.read().splitlines()
        with gzip.open(folder / "metrics.csv.gz", "wt") as handle:
            handle.write("\n".join(lines[:-1]) + "\n")
    else:
        text = (folder / "layout.csv").read_text()
        old, new = {"unknown varname": ("sequential/dense/bias:0", "sequential/batch_normalization/gamma:0"),
                    "not chaining": ("(3, 3, 16, 16)", "(3, 3, 8, 32)"),
                    "bad shape": ("(16,)", "sixteen")}[what]
        (folder / "layout.csv").write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("what, message", [
    ("missing layout", "layout.csv not found"),
    ("row length", "rows hold 4971 values but layout.csv describes 4970"),
    ("metrics rows", "1 rows but weights.npy has 2 models"),
    ("unknown varname", "unknown varname 'sequential/batch_normalization/gamma:0'"),
    ("not chaining", "do not chain"),
    ("bad shape", "cannot parse"),
])
def test_small_cnn_zoo_bad_input_is_one_clear_line(tmp_path, what, message):
    folder = write_zoo(tmp_path / "z", [reference_cnn(0), reference_cnn(1)],
                       [zoo_metrics("relu", 86, 0.5), zoo_metrics("relu", 86, 0.5)])
    _break(folder, what)
    with pytest.raises(ValueError, match=message) as info:
        pz.load_small_cnn_zoo(folder)  # checked before the first model is read
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- SIREN checkpoints
def siren_tensors(style: str, widths=(2, 32, 32, 1), final_sine: bool = False, seed: int = 0) -> dict:
    """A state dict in the DWSNets (seq.{i}.*) or NFN (net.{i}.linear.*, net.{L-1}.*) convention."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    n = len(widths) - 1
    for i in range(n):
        w = torch.randn(widths[i + 1], widths[i], generator=g) * 0.1
        b = torch.randn(widths[i + 1], generator=g) * 0.1
        if style == "dwsnets":
            prefix = f"seq.{i}."
        else:
            prefix = f"net.{i}.linear." if i < n - 1 or final_sine else f"net.{i}."
        state[prefix + "weight"], state[prefix + "bias"] = w, b
    return state


def siren_by_hand(state: dict, x: torch.Tensor, offset: float, final_sine: bool = False,
                  w0: tuple[float, float] = (30.0, 30.0)) -> torch.Tensor:
    pairs = [(state[k], state[k[:-len("weight")] + "bias"]) for k in state if k.endswith("weight")]
    for i, (w, b) in enumerate(pairs):
        x = x @ w.T + b
        if i < len(pairs) - 1 or final_sine:
            x = torch.sin((w0[0] if i == 0 else w0[1]) * x)
    return x + offset


@pytest.mark.parametrize("style, suffix, final_sine, offset", [
    ("dwsnets", ".pth", False, 0.5), ("dwsnets", ".safetensors", False, 0.5),
    ("nfn", ".pth", False, 0.0), ("nfn", ".pt", True, 0.0),
])
def test_siren_checkpoint_loads_both_conventions(tmp_path, style, suffix, final_sine, offset):
    state = siren_tensors(style, final_sine=final_sine)
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = pz.load_siren_checkpoint(path)
    assert isinstance(model, pz.Siren) and model.widths == [2, 32, 32, 1] and not model.training
    assert model.key_style == style and model.final_sine == final_sine and model.output_offset == offset
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    x = torch.rand(64, 2) * 2 - 1
    torch.testing.assert_close(model(x), siren_by_hand(state, x, offset, final_sine), rtol=0, atol=1e-5)
    overridden = pz.load_siren_checkpoint(path, output_offset=0.25, first_w0=10.0, hidden_w0=1.0)
    torch.testing.assert_close(overridden(x), siren_by_hand(state, x, 0.25, final_sine, w0=(10.0, 1.0)),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("style", ["dwsnets", "nfn"])
def test_compiled_siren_round_trips_with_sin_on_hidden_nodes(tmp_path, style):
    path = tmp_path / "inr.pth"
    torch.save(siren_tensors(style, widths=(2, 8, 6, 3)), path)
    model = pz.load_siren_checkpoint(path)
    pg = gc.compile(model, (torch.rand(1, 2),))
    state = pg.to_state_dict(pg.data.edge_attr[:, 0])
    reference = model.state_dict()
    assert set(state) == set(reference) and all(torch.equal(state[k], reference[k]) for k in reference)
    x = pg.data.x
    sin = x[:, schema.node_column("activation")] == schema.code(schema.ACTIVATIONS, "sin")
    roles = x[sin, schema.node_column("role")]
    assert int(sin.sum()) == 8 + 6  # one sine node per hidden unit, none on the linear output layer
    assert bool((roles == schema.code(schema.NODE_ROLES, "neuron")).all())


class _Payload:
    """Unpickling this would run code (record a call); weights_only loading must refuse it."""

    calls: list = []

    def __reduce__(self):
        return (_Payload.calls.append, ("executed",))


@pytest.mark.parametrize("what, message", [
    ("extra key", r"unexpected key\(s\) \['foo.weight'\]"),
    ("nfn extra key", r"unexpected key\(s\) \['net.1.scale'\]"),
    ("missing layer", "must be numbered 0..1"),
    ("not chaining", r"layer 1 has weight \[32, 16\]"),
    ("wrapped", "expected a state dict"),
    ("pickled object", r"refused by torch.load\(weights_only=True\)"),
    ("suffix", "unknown checkpoint suffix"),
])
def test_siren_bad_checkpoint_is_one_clear_line(tmp_path, what, message):
    state = siren_tensors("dwsnets")
    path = tmp_path / ("model.ckpt" if what == "suffix" else "model.pth")
    if what == "extra key":
        state["foo.weight"] = torch.zeros(1)
    elif what == "nfn extra key":
        state = siren_tensors("nfn")
        state["net.1.scale"] = torch.zeros(1)
    elif what == "missing layer":
        del state["seq.1.weight"], state["seq.1.bias"]
    elif what == "not chaining":
        state["seq.1.weight"] = torch.zeros(32, 16)
    elif what == "wrapped":
        state = {"state_dict": state, "epoch": 3}
    elif what == "pickled object":
        state = {"seq.0.weight": torch.zeros(2, 2), "extra": _Payload()}
    torch.save(state, path)
    _Payload.calls.clear()
    with pytest.raises(ValueError, match=message) as info:
        pz.load_siren_checkpoint(path)
    assert "\n" not in str(info.value)
    assert _Payload.calls == []  # nothing in the file ran


def test_siren_folders_to_model_folders(tmp_path):
    dws = tmp_path / "dws"
    expected = {}
    for i, (split, label) in enumerate([("training", 7), ("training", 2), ("testing", 4)]):
        path = dws / f"mnist_png_{split}_{label}_{i}" / "checkpoints" / "model_final.pth"
        path.parent.mkdir(parents=True)
        state = siren_tensors("dwsnets", seed=i)
        torch.save(state, path)
        expected[path.relative_to(dws).as_posix()] = (state, label, "train" if split == "training" else "test")
    table = pz.siren_folder_to_model_folder(dws, tmp_path / "out", label_fn=pz.dwsnets_label)
    with open(table, newline="") as handle:
        assert next(csv.reader(handle)) == ["path", "builder", "builder_kwargs", "input_shape",
                                            "source", "label", "split"]
    x = torch.rand(16, 2)
    built = load_model_folder(tmp_path / "out")
    assert len(built) == 3
    for model, row in built:
        state, label, split = expected[row["source"]]
        assert (int(row["label"]), row["split"]) == (label, split)
        assert row["builder"] == "gmn_models.public_zoos:Siren" and json.loads(row["input_shape"]) == [1, 2]
        torch.testing.assert_close(model(x), siren_by_hand(state, x, 0.5), rtol=0, atol=1e-5)

    nfn = tmp_path / "nfn"
    for i, label in enumerate([3, 3, 9]):
        path = nfn / f"randinit_test_{label}s" / f"net{i}.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(siren_tensors("nfn", seed=i), path)
    pz.siren_folder_to_model_folder(nfn, tmp_path / "out_nfn", label_fn=pz.nfn_label)
    rows = [r for _, r in load_model_folder(tmp_path / "out_nfn")]
    assert [(int(r["label"]), int(r["index"])) for r in rows] == [(3, 0), (3, 1), (9, 2)]
    pz.siren_folder_to_model_folder(nfn, tmp_path / "out_plain", label_fn=lambda p: p.stem, limit=2)
    rows = [r for _, r in load_model_folder(tmp_path / "out_plain")]
    assert [r["label"] for r in rows] == ["net0", "net1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .pth/.pt/.safetensors checkpoints"):
        pz.siren_folder_to_model_folder(tmp_path / "empty", tmp_path / "x")


def test_label_helpers():
    assert pz.dwsnets_label(Path("mnist_png_training_7_123/checkpoints/model_final.pth")) == \
        {"label": 7, "split": "train"}
    assert pz.nfn_label(Path("randinit_test_3s/net42.pth")) == {"label": 3, "index": 42}
    for fn, bad in [(pz.dwsnets_label, "model.pth"), (pz.nfn_label, "randinit_test/net1.pth")]:
        with pytest.raises(ValueError, match="no .* label"):
            fn(Path(bad))


def test_model_folder_writer_refuses_reserved_columns(tmp_path):
    entry = pz.ModelEntry({"w": torch.zeros(1)}, "m:f", {}, [1], {"path": "x"})
    with pytest.raises(ValueError, match="reserved columns"):
        pz.write_model_folder(tmp_path / "o", [entry])
    assert not (tmp_path / "o" / "models.csv").exists()
