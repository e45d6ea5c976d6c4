"""A tiny random-weight `nemotron_h_nano_omni` model folder for mlx-vlm, written offline.

Why: the MLX backend must be tested through mlx-vlm's REAL loading, processing and encoder code (the prompt
cache's correctness depends on how media embeddings land in the decoder), but no model hub is reachable and a
real omni checkpoint is tens of GB. This builds the same architecture in miniature: a hybrid Mamba2 +
attention + MoE decoder ("M*ME"), a RADIO vision tower fed 32x32 images and a Parakeet audio encoder, all with
seeded random weights, plus a byte-level tokenizer with the special tokens the processor looks up and a chat
template (without one mlx-vlm's generate silently drops the image placeholder).

Weights are scaled up from mlx's default initialisation so that a different image or sound visibly moves the
next-token logits (tests assert on logits, since greedy text from random weights is meaningless).
"""
from __future__ import annotations

import json
from pathlib import Path

from . import mlx_blas
from .gguf_test_model import reasoning_chat_template

# Special tokens the Nemotron Omni processor looks up by name, then the chat-turn markers.
_SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>",
    "<img>", "</img>", "<image>", "<video>",
    "<so_start>", "<so_end>", "<so_embedding>",
)
_HIDDEN = 64
_IMAGE_SIDE = 32
_PATCH = 16
# Parakeet positions after 8x subsampling: 40 tokens = 3.2 s of audio, small enough to test the clip limit.
_AUDIO_MAX_POSITIONS = 40
_SAMPLE_RATE = 16_000
_HOP = 160
_GAIN = 2.0

# The GGUF test model's Nemotron-shaped template (thinking, tools), with media parts written as placeholders.
_CHAT_TEMPLATE = reasoning_chat_template(
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'audio' %}<so_embedding>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}")


def _text_config(vocab_size: int | None) -> dict:
    return {
        "model_type": "nemotron_h",
        "vocab_size": vocab_size or len(_SPECIAL_TOKENS) + 256,
        "hidden_size": _HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "max_position_embeddings": 8192,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "attention_bias": False,
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "mamba_proj_bias": False,
        "ssm_state_size": 16,
        "conv_kernel": 4,
        "n_groups": 2,
        "mlp_bias": False,
        "layer_norm_epsilon": 1e-5,
        "use_bias": False,
        "use_conv_bias": True,
        "hybrid_override_pattern": "M*ME",
        "moe_intermediate_size": 64,
        "moe_shared_expert_intermediate_size": 64,
        "n_group": 1,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "topk_group": 1,
        "num_experts_per_tok": 2,
        "norm_topk_prob": True,
        "routed_scaling_factor": 1.0,
        "eos_token_id": _SPECIAL_TOKENS.index("<|im_end|>"),
    }


def _config(with_audio: bool, vocab_size: int | None) -> dict:
    ids = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    config = {
        "model_type": "nemotron_h_nano_omni",
        "text_config": _text_config(vocab_size),
        "vision_config": {
            "model_type": "radio",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": _IMAGE_SIDE,
            "patch_size": _PATCH,
            "max_resolution": 64,
            "args": {"register_multiple": 2, "teachers": []},
        },
        "sound_config": {
            "model_type": "parakeet",
            "hidden_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "intermediate_size": 64,
            "conv_kernel_size": 3,
            "subsampling_factor": 8,
            "subsampling_conv_channels": 8,
            "num_mel_bins": 32,
            "max_position_embeddings": _AUDIO_MAX_POSITIONS,
            "projection_hidden_size": 64,
            "sampling_rate": _SAMPLE_RATE,
            "hop_length": _HOP,
        },
        "downsample_ratio": 0.5,
        "projector_hidden_size": 64,
        "vit_hidden_size": 32,
        "img_context_token_id": ids["<image>"],
        "video_context_token_id": ids["<video>"],
        "sound_context_token_id": ids["<so_embedding>"],
        "eos_token_id": [ids["</s>"], ids["<|im_end|>"]],
    }
    if not with_audio:
        del config["sound_config"]
    return config


def _write_tokenizer(directory: Path) -> None:
    """A byte-level BPE with no merges: every byte is one token, so text token counts are predictable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(_SPECIAL_TOKENS))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "add_bos_token": False,
        "model_max_length": 8192,
        "chat_template": _CHAT_TEMPLATE,
    }, indent=1))


def _write_processor_configs(directory: Path) -> None:
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "norm_mean": [0.5, 0.5, 0.5],
        "norm_std": [0.25, 0.25, 0.25],
        "patch_size": _PATCH,
        "downsample_ratio": 0.5,
        # At most 4x4 patches (64x64 pixels): up to 4 image tokens after the 2x2 pixel shuffle.
        "min_num_patches": 4,
        "max_num_patches": 16,
        "max_model_len": 8192,
    }, indent=1))
    (directory / "processor_config.json").write_text(json.dumps({
        "processor_class": "NemotronHNanoOmniProcessor",
        "audio_sampling_rate": _SAMPLE_RATE,
        "audio_subsampling_factor": 8,
        "audio_hop_length": _HOP,
        "audio_subsampling_conv_kernel_size": 3,
        "audio_subsampling_conv_stride": 2,
    }, indent=1))


def _random_weights(config: dict, seed: int) -> dict:
    """Seeded weights for the real module tree.

    Matrices and convolution kernels are drawn with a gain above the usual 1/sqrt(fan_in), so that the tiny
    encoders' outputs are not washed out by the decoder; 1-D parameters (norm scales, biases, Mamba's A_log,
    D, dt_bias) and the vision input normaliser keep the module's own initial values, which keep the
    recurrences stable. Module construction draws (bias initialisers) from MLX's global generator, so it is
    seeded first: the same seed must give the same bytes, hence the same fingerprint.
    """
    import math

    mlx_blas.choose()  # before mlx is loaded, as the backend does
    import mlx.core as mx
    import mlx.utils
    from mlx_vlm.models.nemotron_h_nano_omni import Model, ModelConfig

    mx.random.seed(seed)
    model = Model(ModelConfig.from_dict(json.loads(json.dumps(config))))
    weights = dict(mlx.utils.tree_flatten(model.parameters()))
    keys = sorted(weights)
    out = {}
    for key, rng in zip(keys, mx.random.split(mx.random.key(seed), len(keys))):
        value = weights[key]
        if value.ndim < 2 or "input_conditioner" in key:
            out[key] = value.astype(mx.float32)
            continue
        fan_in = math.prod(value.shape[1:]) if "conv" in key else value.shape[-1]
        out[key] = (mx.random.normal(value.shape, key=rng) * (_GAIN / math.sqrt(fan_in))).astype(mx.float32)
    mx.eval(out)
    return out


def write_mlx_test_model(directory: Path, *, seed: int = 0, with_audio: bool = True,
                         vocab_size: int | None = None) -> Path:
    """Write the tiny model folder into `directory` (created if needed) and return it.

    Deterministic for a given seed, so a test session (and a second process restoring a snapshot) sees the
    same weights and the same fingerprint. `with_audio=False` leaves out the sound encoder, for testing how a
    backend refuses a modality its model lacks. `vocab_size`: a larger output layer than the byte tokenizer's
    268 ids (a benchmark's Nemotron-sized 131072; the tokenizer never produces the extra ids).
    """
    mlx_blas.choose()  # before mlx is loaded, as the backend does
    import mlx.core as mx

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = _config(with_audio, vocab_size)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    _write_tokenizer(directory)
    _write_processor_configs(directory)
    mx.save_safetensors(str(directory / "model.safetensors"), _random_weights(config, seed),
                        metadata={"format": "mlx"})
    return directory
