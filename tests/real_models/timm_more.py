"""More real architectures (issue 20's 81-architecture recount); see timm_models.py / transformers_models.py."""

from __future__ import annotations

from dataclasses import replace

from real_models.base import image, randomized, register
from real_models.timm_models import _create


@register("XCiT", "timm", "xcit_nano_12_p16_224")
def xcit():
    # cross-covariance attention (channels x channels, l2-normalised q / k, learned temperature),
    # local patch interaction convs, Fourier position encoding, class-attention layers
    return _create("xcit_nano_12_p16_224", 16, img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                   cls_attn_layers=1)


@register("EfficientViT (MIT)", "timm", "efficientvit_b0")
def efficientvit_mit():
    # multi-scale ReLU linear attention (LiteMLA) computed in a float32 torch.autocast region
    return _create("efficientvit_b0", 32, widths=(8, 8, 16, 16, 16), depths=(1, 1, 1, 1, 1), head_dim=8,
                   head_widths=(32, 32))


@register("MobileViT", "timm", "ByobNet(mobilevit_xxs)")
def mobilevit():
    # unfold into patches, transformer over the patches, fold back, fuse with the conv input
    from timm.models import byobnet, mobilevit

    base = mobilevit.model_cfgs["mobilevit_xxs"]
    ir, mvit = base.blocks[2]
    blocks = (replace(base.blocks[0], c=8), replace(ir, c=16),
              replace(mvit, c=16, block_kwargs=dict(mvit.block_kwargs, transformer_dim=16, transformer_depth=1)))
    cfg = replace(base, blocks=blocks, stem_chs=8, num_features=32)
    return randomized(byobnet.ByobNet(cfg, num_classes=5)), (image(16),)


@register("SE-ResNet", "timm", "seresnet50")
def seresnet():
    # squeeze-excitation gates inside bottlenecks
    return _create("seresnet50", 16, layers=(1, 1, 1, 1), stem_width=8, channels=(8, 8, 16, 16))


@register("CSPDarkNet", "timm", "CspNet(cspdarknet53)")
def cspdarknet():
    # cross-stage partial stages: split, dark blocks on one half, concat, transition conv
    from timm.models import cspnet

    base = cspnet.model_cfgs["cspdarknet53"]
    stages = replace(base.stages, depth=(1, 1, 1), out_chs=(16, 16, 32))
    cfg = replace(base, stem=replace(base.stem, out_chs=8), stages=stages)
    return randomized(cspnet.CspNet(cfg, num_classes=5)), (image(16),)


@register("DLA", "timm", "dla34")
def dla():
    # deep layer aggregation: trees of blocks joined by root convs over concatenated outputs
    return _create("dla34", 32, levels=(1, 1, 1, 2, 1, 1), channels=(8, 8, 16, 16, 16, 32))


@register("DPN", "timm", "dpn68")
def dpn():
    # dual path blocks: a residual path summed and a dense path concatenated, grouped 3x3 convs
    # (residual widths are fixed by timm at 64, 128, ... per stage: two stages kept)
    return _create("dpn68", 16, k_sec=(1, 1), inc_sec=(4, 4), k_r=16, groups=2, num_init_features=8)


@register("Xception", "timm", "xception41")
def xception():
    # aligned Xception: separable convs (depthwise + pointwise) with strided shortcut convs
    from timm.models.xception_aligned import XceptionAligned

    block_cfg = [dict(in_chs=64, out_chs=16, stride=2), dict(in_chs=16, out_chs=16, stride=1),
                 dict(in_chs=16, out_chs=(16, 32, 32), stride=2, no_skip=True, start_with_relu=False)]
    return randomized(XceptionAligned(block_cfg, num_classes=5)), (image(16),)


@register("PiT", "timm", "pit_ti_224")
def pit():
    # pooling-based ViT: depthwise strided conv pooling between stages, class token through an FC
    return _create("pit_ti_224", 32, img_size=32, patch_size=8, stride=4, base_dims=(8, 8), depth=(1, 1),
                   heads=(2, 2))


@register("CaiT", "timm", "cait_xxs24_224")
def cait():
    # talking-heads attention (linear mixing across heads), layer scale, class-attention layers
    return _create("cait_xxs24_224", 16, img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                   depth_token_only=1)


@register("Twins", "timm", "twins_svt_small")
def twins():
    # locally grouped self-attention alternating with global sub-sampled attention, conv position encoding
    return _create("twins_svt_small", 32, img_size=32, embed_dims=(8, 16), num_heads=(2, 2), mlp_ratios=(2, 2),
                   depths=(2, 1), wss=(4, 4), sr_ratios=(2, 1))


@register("PVT-v2", "timm", "pvt_v2_b0")
def pvt_v2():
    # spatial-reduction attention (strided conv on keys / values), depthwise conv in the MLP
    return _create("pvt_v2_b0", 32, depths=(1, 1), embed_dims=(8, 16), num_heads=(1, 2), sr_ratios=(2, 1),
                   mlp_ratios=(2, 2))


@register("ConvMixer", "timm", "convmixer_768_32")
def convmixer():
    # patch conv, then residual depthwise convs and pointwise convs
    from torch import nn
    from timm.models.convmixer import ConvMixer

    model = ConvMixer(dim=16, depth=2, kernel_size=3, patch_size=4, act_layer=nn.ReLU, num_classes=5)
    return randomized(model), (image(16),)


@register("Swin-V2", "timm", "swinv2_tiny_window8_256")
def swin_v2():
    # scaled cosine attention with a learned logit scale, continuous position bias MLP, post-norm
    return _create("swinv2_tiny_window8_256", 16, img_size=16, patch_size=2, window_size=4, embed_dim=8,
                   depths=(2, 1), num_heads=(2, 2))


@register("CrossViT", "timm", "crossvit_tiny_240")
def crossvit():
    # two token branches at different patch sizes exchanging their class tokens by cross-attention
    return _create("crossvit_tiny_240", 16, img_size=16, img_scale=(1.0, 1.0), patch_size=(4, 8),
                   embed_dim=(8, 16), depth=((1, 1, 0),), num_heads=(2, 2), mlp_ratio=(2, 2, 1))


@register("FocalNet", "timm", "focalnet_tiny_srf")
def focalnet():
    # focal modulation: hierarchical depthwise-conv contexts gated and summed, multiplied into a query
    from timm.models.focalnet import FocalNet

    model = FocalNet(depths=(1, 1), embed_dim=8, focal_levels=(2, 2), focal_windows=(3, 3), num_classes=5)
    return randomized(model), (image(16),)


@register("DaViT", "timm", "davit_tiny")
def davit():
    # window (spatial) attention alternating with channel-group attention, conv position encodings
    return _create("davit_tiny", 16, depths=(1, 1), embed_dims=(8, 16), num_heads=(2, 2), window_size=2)


@register("TinyViT", "timm", "tiny_vit_5m_224")
def tiny_vit():
    # MBConv stage then window attention with attention biases and a local depthwise conv
    return _create("tiny_vit_5m_224", 32, embed_dims=(8, 16), depths=(1, 1), num_heads=(2, 2), window_sizes=(2, 2))


@register("Hiera", "timm", "hiera_tiny_224")
def hiera():
    # hierarchical ViT: mask-unit attention, unroll / reroll token orderings, query max-pooling
    return _create("hiera_tiny_224", 32, img_size=32, embed_dim=8, num_heads=1, stages=(1, 1), q_pool=1,
                   mask_unit_size=(2, 2), mask_unit_attn=(True, False), patch_kernel=(3, 3), patch_stride=(4, 4),
                   patch_padding=(1, 1))


@register("VoVNet", "timm", "VovNet(ese_vovnet19b_dw)")
def vovnet():
    # one-shot aggregation (concatenate all layer outputs once), effective squeeze-excitation
    from timm.models import vovnet

    cfg = dict(vovnet.model_cfgs["ese_vovnet19b_dw"], stem_chs=(8, 8, 8), stage_conv_chs=(8, 8, 16, 16),
               stage_out_chs=(16, 16, 32, 32), block_per_stage=(1, 1, 1, 1), layer_per_block=2)
    return randomized(vovnet.VovNet(cfg, num_classes=5)), (image(32),)


@register("ReXNet", "timm", "rexnet_100")
def rexnet():
    # linearly growing widths, inverted bottlenecks whose residual covers only the first channels
    return _create("rexnet_100", 32, initial_chs=8, final_chs=72, width_mult=0.25, depth_mult=0.2)


@register("Inception-NeXt", "timm", "inception_next_atto")
def inception_next():
    # inception depthwise mixer: channel split into identity, square and two band-kernel depthwise convs
    from functools import partial

    from timm.models.inception_next import InceptionDWConv2d

    mixer = partial(InceptionDWConv2d, band_kernel_size=5, branch_ratio=0.25)
    return _create("inception_next_atto", 32, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), token_mixers=mixer,
                   mlp_ratios=(2, 2, 2, 2))


@register("Sequencer2d", "timm", "sequencer2d_s")
def sequencer():
    # bidirectional LSTMs run along the rows and along the columns, outputs concatenated
    return _create("sequencer2d_s", 16, img_size=16, layers=(1, 1), patch_sizes=(4, 2), embed_dims=(8, 16),
                   hidden_sizes=(4, 8), mlp_ratios=(2, 2))


@register("ConViT", "timm", "convit_tiny")
def convit():
    # gated positional self-attention: per-head gate between content and learned positional attention
    # (timm multiplies embed_dim by num_heads: 16 channels)
    return _create("convit_tiny", 16, img_size=16, patch_size=8, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2,
                   local_up_to_layer=1)


@register("MViT-v2", "timm", "MultiScaleVit(mvitv2_tiny)")
def mvit_v2():
    # pooling attention (strided conv pooling of q / k / v), decomposed relative positions, residual pooling
    from timm.models import mvitv2

    cfg = replace(mvitv2.model_cfgs["mvitv2_tiny"], depths=(1, 1), embed_dim=8, num_heads=1,
                  stride_q=((1, 1), (2, 2)), patch_kernel=(3, 3), patch_padding=(1, 1))
    return randomized(mvitv2.MultiScaleVit(cfg, img_size=(16, 16), num_classes=5)), (image(16),)


@register("MViT-v2 (class token)", "timm", "MultiScaleVit(mvitv2_tiny, use_cls_token)")
def mvit_v2_cls():
    # the class-token variant: relative positions written into the patch block of the scores
    # (attn[:, :, 1:, 1:] = ...), an in-place write into slices
    from timm.models import mvitv2

    cfg = replace(mvitv2.model_cfgs["mvitv2_tiny"], depths=(1, 1), embed_dim=8, num_heads=1,
                  stride_q=((1, 1), (2, 2)), patch_kernel=(3, 3), patch_padding=(1, 1), use_cls_token=True)
    return randomized(mvitv2.MultiScaleVit(cfg, img_size=(16, 16), num_classes=5)), (image(16),)
