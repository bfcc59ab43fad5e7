import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gmn_models.zoo import families
from gmn_models.zoo import folder as zfolder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and graphs: one intra-op thread is far faster than two (much faster on a
    busy machine); the previous count is restored after the module. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_synthetic_zoo(path, n: int = 60, seed: int = 0) -> list[dict]:
    """MLPs and CNNs (BatchNorm) of several widths; weights = default init × s, s ~ U(0.3, 2),
    label ``test_acc`` = 0.1 + 0.4 (s - 0.3) / 1.7 + tiny noise — independent of architecture."""
    rng = np.random.default_rng(seed)
    rows = []
    (path / "models").mkdir(parents=True)
    for i in range(n):
        torch.manual_seed(seed * 1000 + i)
        width = int(rng.choice([4, 8, 12, 16]))
        if i % 2:
            fam, kw, shape = "mlp", dict(in_features=64, width=width, depth=2), [1, 64]
        else:
            fam, kw, shape = "cnn2d", dict(width=width, depth=2, norm="batch"), [1, 1, 8, 8]
        model = families.BUILDERS[fam](**kw)
        s = float(rng.uniform(0.3, 2.0))
        sd = {k: (v * s if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
        rel = f"models/m{i:03d}.safetensors"
        save_file(sd, str(path / rel))
        rows.append({"path": rel, "builder": f"gmn_models.zoo.families:{fam}",
                     "builder_kwargs": json.dumps(kw), "input_shape": json.dumps(shape),
                     "test_acc": 0.1 + 0.4 * (s - 0.3) / 1.7 + float(rng.normal(0, 0.005)),
                     "train_acc": 0.5, "family": fam, "dataset": "digits", "layout": "flat",
                     "width": width, "depth": 2, "activation": "relu", "norm": "batch" if fam == "cnn2d" else None,
                     "kernel_size": 3 if fam == "cnn2d" else None, "lr": 1e-3, "epochs": 1,
                     "init_scale": 1.0, "weight_decay": 0.0, "label_noise": 0.0, "batch_size": 32,
                     "seed": i, "n_params": sum(v.numel() for v in sd.values() if v.is_floating_point()),
                     "chunk": 0, "member": i})
    (path / "models.csv").write_text(zfolder.rows_to_csv(rows))
    return zfolder.load_rows(path)


@pytest.fixture(scope="session")
def synthetic_zoo(tmp_path_factory):
    """Folder of :func:`make_synthetic_zoo` (60 networks), shared by the zoo test modules."""
    path = tmp_path_factory.mktemp("synthetic")
    make_synthetic_zoo(path)
    return path
