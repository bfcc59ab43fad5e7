"""Hugging Face ``transformers`` architectures, built from configs at width 16 with 2 heads."""

from __future__ import annotations

import torch

from real_models.base import HEADS, POSITIONS, SEQ, VOCAB, WIDTH, hf, image, register, tf, token_ids

FFN = 2 * WIDTH
TINY = dict(hidden_size=WIDTH, num_attention_heads=HEADS, intermediate_size=FFN, vocab_size=VOCAB)
DECODER = dict(TINY, num_hidden_layers=1, max_position_embeddings=POSITIONS, use_cache=False)


def id_inputs() -> tuple:
    return (token_ids(),)


@register("GPT-2", "transformers", "GPT2Model")
def gpt2():
    config = tf().GPT2Config(n_layer=2, n_head=HEADS, n_embd=WIDTH, vocab_size=VOCAB, n_positions=POSITIONS,
                             use_cache=False)
    return hf(tf().GPT2Model(config), id_inputs())


@register("BERT", "transformers", "BertModel")
def bert():
    config = tf().BertConfig(num_hidden_layers=2, max_position_embeddings=POSITIONS, **TINY)
    return hf(tf().BertModel(config), id_inputs())


@register("RoBERTa", "transformers", "RobertaModel")
def roberta():
    config = tf().RobertaConfig(num_hidden_layers=1, max_position_embeddings=POSITIONS, pad_token_id=1, **TINY)
    return hf(tf().RobertaModel(config), id_inputs())


@register("ALBERT", "transformers", "AlbertModel")
def albert():
    # one layer's weights shared by both layers; a factorised embedding (8 -> 16)
    config = tf().AlbertConfig(embedding_size=8, num_hidden_layers=2, max_position_embeddings=POSITIONS, **TINY)
    return hf(tf().AlbertModel(config), id_inputs())


@register("DistilBERT", "transformers", "DistilBertModel")
def distilbert():
    config = tf().DistilBertConfig(dim=WIDTH, n_layers=1, n_heads=HEADS, hidden_dim=FFN, vocab_size=VOCAB,
                                   max_position_embeddings=POSITIONS)
    return hf(tf().DistilBertModel(config), id_inputs())


def seq2seq(model) -> tuple:
    decoder = token_ids(SEQ - 2)
    return hf(model, (token_ids(), decoder), names=("input_ids", "decoder_input_ids"))


@register("T5", "transformers", "T5Model")
def t5():
    config = tf().T5Config(d_model=WIDTH, d_kv=8, d_ff=FFN, num_layers=1, num_decoder_layers=1, num_heads=HEADS,
                           vocab_size=VOCAB, relative_attention_num_buckets=8,
                           relative_attention_max_distance=16, use_cache=False)
    return seq2seq(tf().T5Model(config))


@register("BART", "transformers", "BartModel")
def bart():
    config = tf().BartConfig(d_model=WIDTH, encoder_layers=1, decoder_layers=1, encoder_attention_heads=HEADS,
                             decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
                             vocab_size=VOCAB, max_position_embeddings=POSITIONS, use_cache=False)
    return seq2seq(tf().BartModel(config))


def grouped_query(**extra) -> dict:
    # 4 query heads sharing 2 key/value heads, head dim 4
    return dict(DECODER, num_attention_heads=4, num_key_value_heads=2, head_dim=4, **extra)


@register("Llama", "transformers", "LlamaModel")
def llama():
    return hf(tf().LlamaModel(tf().LlamaConfig(**grouped_query())), id_inputs())


@register("Mistral", "transformers", "MistralModel")
def mistral():
    return hf(tf().MistralModel(tf().MistralConfig(**grouped_query(sliding_window=4))), id_inputs())


@register("Qwen2", "transformers", "Qwen2Model")
def qwen2():
    return hf(tf().Qwen2Model(tf().Qwen2Config(**grouped_query())), id_inputs())


@register("Gemma2", "transformers", "Gemma2Model")
def gemma2():
    # two layers: one sliding-window, one global; logit soft-capping; RMSNorm with (1 + weight)
    config = tf().Gemma2Config(**grouped_query(num_hidden_layers=2, sliding_window=4, query_pre_attn_scalar=4))
    return hf(tf().Gemma2Model(config), id_inputs())


@register("Phi-3", "transformers", "Phi3Model")
def phi3():
    # fused qkv and gate/up projections
    config = tf().Phi3Config(**dict(grouped_query(), pad_token_id=0))
    return hf(tf().Phi3Model(config), id_inputs())


@register("GPT-NeoX", "transformers", "GPTNeoXModel")
def gpt_neox():
    config = tf().GPTNeoXConfig(**dict(DECODER, rotary_pct=0.5))
    return hf(tf().GPTNeoXModel(config), id_inputs())


@register("OPT", "transformers", "OPTModel")
def opt():
    config = tf().OPTConfig(hidden_size=WIDTH, num_hidden_layers=1, ffn_dim=FFN, num_attention_heads=HEADS,
                            vocab_size=VOCAB, max_position_embeddings=POSITIONS, word_embed_proj_dim=WIDTH,
                            use_cache=False)
    return hf(tf().OPTModel(config), id_inputs())


@register("Bloom", "transformers", "BloomModel")
def bloom():
    config = tf().BloomConfig(hidden_size=WIDTH, n_layer=1, n_head=HEADS, vocab_size=VOCAB, use_cache=False)
    return hf(tf().BloomModel(config), id_inputs())


@register("Falcon", "transformers", "FalconModel")
def falcon():
    # multi-query attention: one key/value head indexed out of the fused projection
    config = tf().FalconConfig(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=HEADS,
                               vocab_size=VOCAB, multi_query=True, new_decoder_architecture=False,
                               use_cache=False)
    return hf(tf().FalconModel(config), id_inputs())


@register("CLIP vision", "transformers", "CLIPVisionModel")
def clip_vision():
    config = tf().CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=1,
                                   num_attention_heads=HEADS, image_size=16, patch_size=8)
    return hf(tf().CLIPVisionModel(config), (image(16),), names=("pixel_values",))


@register("HF ViT", "transformers", "ViTModel")
def hf_vit():
    config = tf().ViTConfig(num_hidden_layers=1, image_size=16, patch_size=8, **{k: v for k, v in TINY.items()
                                                                              if k != "vocab_size"})
    return hf(tf().ViTModel(config, add_pooling_layer=False), (image(16),), names=("pixel_values",))


@register("Whisper encoder", "transformers", "WhisperEncoder")
def whisper_encoder():
    config = tf().WhisperConfig(d_model=WIDTH, encoder_layers=1, encoder_attention_heads=HEADS,
                                encoder_ffn_dim=FFN, num_mel_bins=8, max_source_positions=SEQ,
                                vocab_size=VOCAB)
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    features = torch.randn(1, 8, 2 * SEQ, generator=torch.Generator().manual_seed(1))
    return hf(WhisperEncoder(config), (features,), names=("input_features",))


@register("Wav2Vec2", "transformers", "Wav2Vec2Model")
def wav2vec2():
    config = tf().Wav2Vec2Config(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=HEADS,
                                 intermediate_size=FFN, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                                 num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
                                 feat_extract_norm="group", vocab_size=VOCAB)
    audio = torch.randn(1, 200, generator=torch.Generator().manual_seed(1))
    return hf(tf().Wav2Vec2Model(config), (audio,), names=("input_values",))



# ---------------------------------------------------------------- issue 20's families
@register("Gemma", "transformers", "GemmaModel")
def gemma():
    # RMSNorm scaled by (1 + weight)
    return hf(tf().GemmaModel(tf().GemmaConfig(**grouped_query())), id_inputs())


@register("Mamba", "transformers", "MambaModel")
def mamba():
    # A = -exp(A_log); the selective scan unrolled (no CUDA kernels on the CPU)
    config = tf().MambaConfig(hidden_size=WIDTH, state_size=4, num_hidden_layers=1, vocab_size=VOCAB,
                              expand=2, conv_kernel=3, time_step_rank=2, use_cache=False)
    return hf(tf().MambaModel(config), id_inputs())


@register("MobileBERT", "transformers", "MobileBertModel")
def mobilebert():
    # trigram embeddings: shifted copies of the sequence padded with zeros along the tokens
    config = tf().MobileBertConfig(hidden_size=WIDTH, embedding_size=8, num_hidden_layers=1, num_attention_heads=HEADS,
                                   intermediate_size=FFN, intra_bottleneck_size=8, true_hidden_size=8,
                                   num_feedforward_networks=1, vocab_size=VOCAB, max_position_embeddings=POSITIONS)
    return hf(tf().MobileBertModel(config, add_pooling_layer=False), id_inputs())


@register("DeBERTa-v2", "transformers", "DebertaV2Model")
def deberta_v2():
    # disentangled attention as deberta-v3 configures it: content-to-position and
    # position-to-content scores, the relative embedding table normalised and projected by the
    # layer's own q/k projections (a parameter read as a tensor), picked per (query, key) pair
    # by a gather; relative positions in log buckets computed in forward (constants)
    config = tf().DebertaV2Config(num_hidden_layers=1, max_position_embeddings=POSITIONS, position_buckets=4,
                                  max_relative_positions=8, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                  share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
                                  **TINY)
    return hf(tf().DebertaV2Model(config), id_inputs())


@register("DeBERTa", "transformers", "DebertaModel")
def deberta():
    # DeBERTa v1: separate position projections (pos_proj, pos_q_proj) of the relative table
    config = tf().DebertaConfig(num_hidden_layers=1, max_position_embeddings=POSITIONS, max_relative_positions=8,
                                relative_attention=True, pos_att_type=["p2c", "c2p"], **TINY)
    return hf(tf().DebertaModel(config), id_inputs())


@register("Mixtral", "transformers", "MixtralModel")
def mixtral():
    # a mixture of experts: top-k routing
    config = tf().MixtralConfig(**grouped_query(num_local_experts=4, num_experts_per_tok=2))
    return hf(tf().MixtralModel(config), id_inputs())


@register("GPT-BigCode", "transformers", "GPTBigCodeModel")
def gpt_bigcode():
    # multi-query attention with a fused c_attn
    config = tf().GPTBigCodeConfig(n_layer=1, n_head=HEADS, n_embd=WIDTH, vocab_size=VOCAB, n_positions=POSITIONS,
                                   multi_query=True, use_cache=False)
    return hf(tf().GPTBigCodeModel(config), id_inputs())


@register("ELECTRA", "transformers", "ElectraModel")
def electra():
    config = tf().ElectraConfig(embedding_size=8, num_hidden_layers=1, max_position_embeddings=POSITIONS, **TINY)
    return hf(tf().ElectraModel(config), id_inputs())
