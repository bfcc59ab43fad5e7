"""timm architectures, built from their own classes with few blocks and 8-32 channels.

Where timm's factory takes the shape as keyword arguments, ``create_model`` is used; where the
shape lives in a config object (ByobNet, RegNet, MaxxViT, EfficientNet / MobileNet arch
strings), the model's own config is shrunk with ``dataclasses.replace`` or written in timm's
arch-string notation, so that every block kind of the real model is kept.
"""

from __future__ import annotations

from dataclasses import replace

from real_models.base import image, randomized, register, timm


def _create(name: str, size: int, **kwargs):
    model = timm().create_model(name, pretrained=False, num_classes=5, **kwargs)
    return randomized(model), (image(size),)


@register("ResNet", "timm", "resnet18")
def resnet():
    return _create("resnet18", 16, layers=(1, 1, 1, 1), stem_width=8, channels=(8, 8, 16, 16))


@register("ResNeXt", "timm", "resnext50_32x4d")
def resnext():
    # 2 groups of 8 channels per bottleneck: width = channels * base_width / 64 * cardinality
    return _create("resnext50_32x4d", 16, layers=(1, 1, 1, 1), stem_width=8, channels=(16, 16, 32, 32),
                   cardinality=2, base_width=16)


def _byob(name: str, size: int, stages: int, depth: int, widths: tuple, stem: int, **cfg):
    """A ByobNet (RepVGG, MobileOne, ...) from its own config, with the first ``stages`` stage
    entries, ``depth`` blocks each and the given widths."""
    from timm.models import byobnet

    base = byobnet.model_cfgs[name]
    blocks = []
    for stage, width in zip(base.blocks[:stages], widths):
        stage = stage if isinstance(stage, (list, tuple)) else (stage,)
        blocks.append(tuple(replace(b, d=min(b.d, depth), c=width) for b in stage[:2]))
    flat = tuple(b for stage in blocks for b in stage)
    cfg = replace(base, blocks=flat, stem_chs=stem, num_features=0, **cfg)
    return randomized(byobnet.ByobNet(cfg, num_classes=5)), (image(size),)


@register("RepVGG", "timm", "ByobNet(repvgg_a0)")
def repvgg():
    # train-time form: 3x3 conv + BN, 1x1 conv + BN and identity BN branches summed
    return _byob("repvgg_a0", 16, stages=3, depth=2, widths=(8, 16, 16), stem=8)


@register("MobileOne", "timm", "ByobNet(mobileone_s0)")
def mobileone():
    # over-parameterised branches (4 depthwise / pointwise conv+BN branches, scale branch, identity)
    return _byob("mobileone_s0", 16, stages=3, depth=1, widths=(8, 16, 16), stem=8)


@register("RegNet", "timm", "RegNet(regnetx_002-like)")
def regnet():
    from timm.models.regnet import RegNet, RegNetCfg

    cfg = RegNetCfg(depth=4, w0=8, wa=8.0, wm=1.3, group_size=4, stem_width=8, se_ratio=0.25)  # 4 stages: 8-32
    return randomized(RegNet(cfg, num_classes=5)), (image(16),)


@register("DenseNet", "timm", "densenet121")
def densenet():
    return _create("densenet121", 16, growth_rate=4, block_config=(2, 2), bn_size=2)


@register("EfficientNet", "timm", "EfficientNet(efficientnet_b0 blocks)")
def efficientnet():
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    arch = [["ds_r1_k3_s1_e1_c8_se0.25"], ["ir_r1_k3_s2_e6_c8_se0.25"], ["ir_r2_k5_s2_e6_c16_se0.25"]]
    model = EfficientNet(decode_arch_def(arch), num_classes=5, stem_size=8, num_features=32)
    return randomized(model), (image(16),)


@register("MobileNetV3", "timm", "MobileNetV3(mobilenetv3_small blocks)")
def mobilenetv3():
    from functools import partial

    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.mobilenetv3 import MobileNetV3

    arch = [["ds_r1_k3_s2_e1_c8_se0.25_nre"], ["ir_r1_k3_s2_e4.5_c8_nre"], ["ir_r1_k5_s2_e4_c16_se0.25"],
            ["cn_r1_k1_s1_c32"]]
    se = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=get_act_layer("relu"))
    model = MobileNetV3(decode_arch_def(arch), num_classes=5, stem_size=8, num_features=32,
                        act_layer=get_act_layer("hard_swish"), se_layer=se, head_norm=False)
    return randomized(model), (image(32),)


@register("MobileNetV4", "timm", "MobileNetV3(mobilenetv4_hybrid blocks)")
def mobilenetv4():
    from timm.layers import get_act_layer
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.mobilenetv3 import MobileNetV3

    # fused inverted bottleneck, universal inverted bottlenecks (extra depthwise), multi-query
    # attention with key/value downsampling; layer scale
    arch = [["er_r1_k3_s2_e4_c8"], ["uir_r1_a3_k5_s2_e4_c16", "uir_r1_a0_k3_s1_e2_c16"],
            ["mqa_r1_k3_h2_s1_v2_d8_c16"], ["cn_r1_k1_s1_c32"]]
    model = MobileNetV3(decode_arch_def(arch), num_classes=5, stem_size=8, num_features=32,
                        act_layer=get_act_layer("relu"), layer_scale_init_value=0.5)
    return randomized(model), (image(16),)


@register("GhostNet", "timm", "GhostNet")
def ghostnet():
    from timm.models.ghostnet import GhostNet

    # [kernel, expansion, channels, se ratio, stride] per block
    cfgs = [[[3, 16, 16, 0, 1]], [[3, 24, 16, 0, 2]], [[5, 32, 24, 0.25, 2]]]
    return randomized(GhostNet(cfgs, num_classes=5, width=0.5)), (image(16),)


@register("ConvNeXt", "timm", "convnext_atto")
def convnext():
    return _create("convnext_atto", 32, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), ls_init_value=0.5)


@register("ViT", "timm", "vit_tiny_patch16_224")
def vit():
    return _create("vit_tiny_patch16_224", 16, img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2)


@register("DeiT", "timm", "deit_tiny_distilled_patch16_224")
def deit():
    # distilled: a class token and a distillation token, two heads averaged
    return _create("deit_tiny_distilled_patch16_224", 16, img_size=16, patch_size=8, embed_dim=16, depth=1,
                   num_heads=2)


@register("Swin", "timm", "swin_tiny_patch4_window7_224")
def swin():
    # shifted windows, relative-position bias tables, patch merging
    return _create("swin_tiny_patch4_window7_224", 16, img_size=16, patch_size=2, window_size=4, embed_dim=8,
                   depths=(2, 1), num_heads=(2, 2))


@register("MLP-Mixer", "timm", "MlpMixer(mixer_s16_224)")
def mixer():
    # token-mixing MLPs (a linear layer over the patch axis)
    from timm.models.mlp_mixer import MlpMixer

    model = MlpMixer(num_classes=5, img_size=16, patch_size=4, num_blocks=2, embed_dim=16)
    return randomized(model), (image(16),)


@register("LeViT", "timm", "levit_128s")
def levit():
    # attention biases indexed by constant position offsets; subsampling attention
    return _create("levit_128s", 32, img_size=32, embed_dim=(16, 24), key_dim=8, depth=(1, 1), num_heads=(2, 3),
                   attn_ratio=(2, 2), mlp_ratio=(2, 2))


@register("BEiT", "timm", "beit_base_patch16_224")
def beit():
    return _create("beit_base_patch16_224", 16, img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)


@register("EVA", "timm", "eva02_tiny_patch14_224")
def eva():
    return _create("eva02_tiny_patch14_224", 14, img_size=14, patch_size=7, embed_dim=16, depth=1, num_heads=2)


@register("MaxViT", "timm", "MaxxVit(maxvit_pico_rw)")
def maxvit():
    from timm.models import maxxvit

    base = maxxvit.model_cfgs["maxvit_pico_rw"]
    cfg = replace(base, embed_dim=(16, 16), depths=(1, 1), block_type=("M", "M"), stem_width=(8, 16),
                  transformer_cfg=replace(base.transformer_cfg, dim_head=8, partition_ratio=8))
    return randomized(maxxvit.MaxxVit(cfg, img_size=32, num_classes=5)), (image(32),)


@register("PoolFormer", "timm", "MetaFormer(poolformer_s12)")
def poolformer():
    from torch import nn
    from timm.models.metaformer import GroupNorm1, MetaFormer

    # poolformer_s12's own arguments, 1 block per stage and 8-16 channels
    model = MetaFormer(num_classes=5, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), downsample_norm=None,
                       mlp_act=nn.GELU, mlp_bias=True, norm_layers=GroupNorm1, layer_scale_init_values=0.5,
                       res_scale_init_values=None, use_mlp_head=False)
    return randomized(model), (image(32),)


@register("FastViT", "timm", "fastvit_t8")
def fastvit():
    return _create("fastvit_t8", 32, layers=(1, 1, 1, 1), embed_dims=(8, 8, 16, 16))


# ---------------------------------------------------------------- issue 20's families
@register("ResMLP", "timm", "resmlp_12_224")
def resmlp():
    # Affine layers: addcmul(beta, alpha, x); token-mixing linear
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    model = MlpMixer(num_classes=5, img_size=16, patch_size=4, num_blocks=2, embed_dim=16, mlp_ratio=2,
                     block_layer=ResBlock, norm_layer=Affine)
    return randomized(model), (image(16),)


@register("NF-ResNet", "timm", "nf_resnet26")
def nf_resnet():
    # ScaledStdConv2d: weight standardisation computed in forward
    from timm.models import nfnet

    cfg = replace(nfnet.model_cfgs["nf_resnet26"], depths=(1, 1, 1, 1), channels=(16, 16, 32, 32), stem_chs=8)
    return randomized(nfnet.NormFreeNet(cfg, num_classes=5)), (image(16),)


@register("EfficientNet (TF padding)", "timm", "tf_efficientnet_b0")
def tf_efficientnet():
    # Conv2dSame: asymmetric "SAME" padding computed in forward
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    arch = [["ds_r1_k3_s1_e1_c8_se0.25"], ["ir_r1_k3_s2_e6_c8_se0.25"], ["ir_r1_k5_s2_e6_c16_se0.25"]]
    model = EfficientNet(decode_arch_def(arch), num_classes=5, stem_size=8, num_features=32, pad_type="same")
    return randomized(model), (image(17),)


@register("ConvNeXt-V2", "timm", "convnextv2_atto")
def convnext_v2():
    # global response normalisation
    return _create("convnextv2_atto", 32, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))


@register("Res2Net", "timm", "res2net50_26w_4s")
def res2net():
    # hierarchical split / cat of channel groups inside each bottleneck
    return _create("res2net50_26w_4s", 16, layers=(1, 1, 1, 1), channels=(16, 16, 32, 32), base_width=16,
                   stem_width=8)


@register("CoaT", "timm", "coat_lite_tiny")
def coat():
    # class token + convolutional position encoding concatenated along the tokens; 64 px so that the
    # last stage keeps 2 x 2 patch tokens (with one patch token beside the class token, two
    # one-entry parts along the tokens cannot be told from units concatenated one by one: refused)
    return _create("coat_lite_tiny", 64, img_size=64, embed_dims=(8, 16, 16, 16), serial_depths=(1, 1, 1, 1),
                   num_heads=2, mlp_ratios=(2, 2, 2, 2), crpe_window={3: 2})


@register("EdgeNeXt", "timm", "edgenext_xx_small")
def edgenext():
    # a conv over Fourier position features computed from constants
    return _create("edgenext_xx_small", 32, depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), heads=(2, 2, 2, 2),
                   d2_scales=(2, 2, 2, 2))
