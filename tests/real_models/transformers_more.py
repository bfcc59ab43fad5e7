"""More real architectures (issue 20's 81-architecture recount); see timm_models.py / transformers_models.py."""

from __future__ import annotations

from real_models.base import HEADS, POSITIONS, VOCAB, WIDTH, hf, image, register, tf
from real_models.transformers_models import DECODER, FFN, TINY, grouped_query, id_inputs, seq2seq


# ---------------------------------------------------------------- decoders
@register("GPT-J", "transformers", "GPTJModel")
def gpt_j():
    # attention and MLP in parallel off one LayerNorm; interleaved rotary on the first 4 of 8 dims
    config = tf().GPTJConfig(n_embd=WIDTH, n_layer=1, n_head=HEADS, n_inner=FFN, rotary_dim=4, vocab_size=VOCAB,
                             n_positions=POSITIONS, use_cache=False)
    return hf(tf().GPTJModel(config), id_inputs())


@register("Phi", "transformers", "PhiModel")
def phi():
    # parallel attention and MLP; rotary on half of each head; LayerNorm on queries and keys
    config = tf().PhiConfig(**dict(DECODER, partial_rotary_factor=0.5, qk_layernorm=True))
    return hf(tf().PhiModel(config), id_inputs())


@register("Qwen3", "transformers", "Qwen3Model")
def qwen3():
    # RMSNorm on every query and key head before the rotary embedding
    return hf(tf().Qwen3Model(tf().Qwen3Config(**grouped_query())), id_inputs())


@register("OLMo2", "transformers", "Olmo2Model", rtol=1e-6, atol=1e-8)
def olmo2():
    # RMSNorm over the whole query / key projections (all heads at once); norms after each sublayer.
    # The norms compute in float32 even in the float64 copy, so permuting heads reorders a float32
    # sum inside the query norm (|change| ~ 3e-8): tolerances a little above float32 rounding
    return hf(tf().Olmo2Model(tf().Olmo2Config(**grouped_query())), id_inputs())


@register("Cohere", "transformers", "CohereModel")
def cohere():
    # parallel attention and MLP; bias-free LayerNorm, per head on queries and keys; interleaved rotary
    return hf(tf().CohereModel(tf().CohereConfig(**grouped_query(use_qk_norm=True))), id_inputs())


@register("Starcoder2", "transformers", "Starcoder2Model")
def starcoder2():
    # grouped-query attention with biases on every projection; LayerNorm; a plain GELU MLP (c_fc / c_proj)
    return hf(tf().Starcoder2Model(tf().Starcoder2Config(**grouped_query(use_bias=True))), id_inputs())


# ---------------------------------------------------------------- encoders
@register("MPNet", "transformers", "MPNetModel")
def mpnet():
    # a learned relative-position bias (bucketed) shared by every layer; the bucketing hard-codes 32
    # buckets, so the config's default stays
    config = tf().MPNetConfig(num_hidden_layers=1, max_position_embeddings=POSITIONS, **TINY)
    return hf(tf().MPNetModel(config, add_pooling_layer=False), id_inputs())


@register("ConvBERT", "transformers", "ConvBertModel")
def convbert():
    # span-based dynamic convolution beside half the heads; grouped linear layers in the FFN
    config = tf().ConvBertConfig(embedding_size=8, num_hidden_layers=1, max_position_embeddings=POSITIONS,
                                 head_ratio=2, conv_kernel_size=3, num_groups=2, **TINY)
    return hf(tf().ConvBertModel(config), id_inputs())


# ---------------------------------------------------------------- encoder-decoder
@register("Pegasus", "transformers", "PegasusModel")
def pegasus():
    # pre-norm encoder and decoder with sinusoidal positions and a final LayerNorm on each
    config = tf().PegasusConfig(d_model=WIDTH, encoder_layers=1, decoder_layers=1, encoder_attention_heads=HEADS,
                                decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
                                vocab_size=VOCAB, max_position_embeddings=POSITIONS, use_cache=False)
    return seq2seq(tf().PegasusModel(config))


# ---------------------------------------------------------------- vision
@register("DINOv2", "transformers", "Dinov2Model")
def dinov2():
    # layer scale on both residual branches; a mask token left unused
    config = tf().Dinov2Config(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=HEADS, mlp_ratio=2,
                               image_size=16, patch_size=8)
    return hf(tf().Dinov2Model(config), (image(16),), names=("pixel_values",))


@register("Swin (HF)", "transformers", "SwinModel")
def swin():
    # windowed attention with a relative-position bias table; the second block of stage one shifted
    # (a rolled, masked window); patch merging into stage two
    config = tf().SwinConfig(image_size=16, patch_size=2, embed_dim=8, depths=(2, 1), num_heads=(2, 2),
                             window_size=4, mlp_ratio=2.0)
    return hf(tf().SwinModel(config, add_pooling_layer=False), (image(16),), names=("pixel_values",))


@register("SegFormer", "transformers", "SegformerModel")
def segformer():
    # overlapping patch embeddings (strided convolutions); attention with keys / values from a spatially
    # reduced (strided convolution) sequence; a depthwise convolution inside each MLP; two stages
    config = tf().SegformerConfig(num_encoder_blocks=2, depths=(1, 1), sr_ratios=(2, 1), hidden_sizes=(8, WIDTH),
                                  patch_sizes=(3, 3), strides=(2, 2), num_attention_heads=(1, HEADS),
                                  mlp_ratios=(2, 2), decoder_hidden_size=WIDTH)
    return hf(tf().SegformerModel(config), (image(16),), names=("pixel_values",))


@register("Qwen3-MoE", "transformers", "Qwen3MoeModel")
def qwen3_moe():
    # a mixture of experts without renormalising the kept router probabilities (norm_topk_prob
    # False), after a dense MLP layer (mlp_only_layers); per-head q/k RMSNorm
    config = tf().Qwen3MoeConfig(**grouped_query(num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
                                                 moe_intermediate_size=8, norm_topk_prob=False,
                                                 mlp_only_layers=[0]))
    return hf(tf().Qwen3MoeModel(config), id_inputs())
