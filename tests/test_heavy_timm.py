"""Heavy tests: real timm models, built with random initialisation (no downloads).

Run in the heavy environment (README, "Heavy tests": torch 2.14.1 + torchvision 0.29.1, which
timm needs). ``timm`` is imported inside the tests so that the default run still collects
this module; the heavy run fails loudly, rather than skipping, where timm is missing.

Full-size models compile and round-trip bit for bit; small configurations of the same timm
classes (fewer blocks, narrower) also pass the soundness and completeness oracles, which
run the model once per automorphism.
"""

from __future__ import annotations

import pytest
import torch

import gmn_compiler as gc
from oracles import assert_round_trip, randomize_buffers

pytestmark = pytest.mark.heavy


def _timm():
    import timm  # lazy: see the module docstring

    return timm


def _full(name: str):
    torch.manual_seed(0)
    return randomize_buffers(_timm().create_model(name, pretrained=False).eval())


FULL = {  # name -> input resolution (ViT's position table fixes 224)
    "resnet18": 64, "vit_tiny_patch16_224": 224, "convnext_atto": 64, "efficientnet_b0": 64,
}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_timm_model_round_trips_bit_exact(name):
    model = _full(name)
    size = FULL[name]
    pg = assert_round_trip(model, (torch.randn(1, 3, size, size),))
    params = sum(p.numel() for p in model.parameters())
    # at least one edge per parameter entry; the summary's check is one edge per entry, more
    # only for parameters used several times
    assert int((pg.data.edge_param >= 0).sum()) >= params


def _small(name: str):
    timm = _timm()
    torch.manual_seed(0)
    if name == "resnet18":
        model = timm.create_model("resnet18", pretrained=False, layers=(1, 1, 1, 1), stem_width=8,
                                  channels=(8, 8, 16, 16), num_classes=5)
    elif name == "vit_tiny_patch16_224":
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8,
                                  embed_dim=16, depth=2, num_heads=2, num_classes=5)
    elif name == "convnext_atto":
        model = timm.create_model("convnext_atto", pretrained=False, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16),
                                  num_classes=5, ls_init_value=0.5)
    else:
        # efficientnet_b0's own block kinds (depthwise-separable, inverted residual with
        # squeeze-and-excitation), three stages instead of seven
        from timm.models._efficientnet_builder import decode_arch_def
        from timm.models.efficientnet import EfficientNet

        arch = [["ds_r1_k3_s1_e1_c8_se0.25"], ["ir_r1_k3_s2_e6_c8_se0.25"], ["ir_r2_k5_s2_e6_c16_se0.25"]]
        model = EfficientNet(decode_arch_def(arch), num_classes=5, stem_size=8, num_features=32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised biases / layer scales would hide swapped edges
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return randomize_buffers(model).eval()


SMALL_INPUT = {"resnet18": 16, "vit_tiny_patch16_224": 16, "convnext_atto": 32, "efficientnet_b0": 16}


@pytest.mark.parametrize("name", sorted(SMALL_INPUT))
def test_small_timm_config_passes_the_oracles(name):
    model = _small(name)
    x = torch.randn(1, 3, SMALL_INPUT[name], SMALL_INPUT[name])
    pg = assert_round_trip(model, (x,))
    report = gc.check_symmetry(model, (x,), trials=3, graph=pg, timeout=300)
    assert report.automorphisms_checked == 3
    assert report.symmetries_checked, "no declared symmetry was checked"


def test_deit_distilled_small_config_is_sound_and_passes_the_swap_test():
    """DeiT-distilled averages a head on the cls token and a head on the distillation token:
    before issue 19's view signatures ``h[:, 0]`` and ``h[:, 1]`` shared nodes and the two
    heads were swappable."""
    from gmn_compiler.testing import swap_test

    torch.manual_seed(0)
    model = _timm().create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=16,
                                 patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model = randomize_buffers(model).eval()
    x = torch.randn(1, 3, 16, 16)
    pg = assert_round_trip(model, (x,))
    gc.check_symmetry(model, (x,), trials=3, graph=pg)
    heads = [("head.weight", "head_dist.weight"), ("head.bias", "head_dist.bias")]
    assert swap_test(model, (x,), pairs=heads).changed == 1  # the weights; swapped biases add alike
    assert swap_test(model, (x,), max_pairs=24).pairs
