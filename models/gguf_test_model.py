"""A tiny random-weight omni model in GGUF: a text decoder plus ONE Nemotron-layout mmproj.

Why: the llama.cpp backend, the prompt cache and the pipelines must be tested through the REAL inference path
(llama.cpp + libmtmd) without downloading a 30B model. The files written here load exactly like NVIDIA Nemotron 3
Nano Omni does in llama.cpp: a text GGUF and one projector file holding a RADIO-style vision encoder
(clip.vision.projector_type=nemotron_v2_vl) and a Parakeet conformer audio encoder (clip.audio.projector_type=
parakeet). Writing both takes a few hundredths of a second.

The default text decoder is `nemotron_h_moe`, the target model's own architecture in miniature: Mamba2 layers,
attention layers and MoE feed-forward layers (routed experts + one shared expert). Such a sequence cannot be cut
back (its state is a recurrent state per Mamba layer plus KV for the attention layers), so the cache is tested on
the kind of decoder users run. `decoder="llama"` writes the attention-only decoder instead, for what only an
attention decoder can do (cutting the live sequence back).

The weights are random but scaled (~1/sqrt(fan_in)) so activations neither vanish nor explode: next-token logits
differ measurably when the image or the sound differs, which is what tests assert on (never on wording).
Tensor names and shapes follow the vendored src/models/nemotron-h.cpp and mamba-base.cpp, tools/mtmd/clip.cpp,
clip-impl.h and models/{nemotron-v2-vl,parakeet}.cpp of llama-cpp-python 0.3.36. numpy shapes are ggml `ne`
reversed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

#: Text decoder width (the projector's output width must equal N_EMBD).
N_EMBD = 64

#: The `llama` decoder. One 64-wide attention head: real decoders use heads 64-128 wide, and ggml's CPU attention
#: over a long context costs several times more per token with 16-wide heads, which would make cache-hit timings
#: on this model unlike a real one's.
N_HEAD = 1
N_LAYER = 2
N_FF = 128

#: The `nemotron_h_moe` decoder, layer by layer as in the target's hybrid_override_pattern: M = Mamba2 mixer,
#: * = attention, E = MoE feed-forward (Nemotron 3 Nano: 23 M, 6 *, 23 E in 52 layers). llama.cpp tells the
#: kinds apart by the per-layer arrays: head_count_kv > 0 marks attention, feed_forward_length > 0 MoE, both 0
#: Mamba2 (src/models/nemotron-h.cpp).
HYBRID_PATTERN = "MM*EME"
#: Mamba2: d_inner = 2 x n_embd in 4 heads of 32, 2 groups of B/C with state 16, causal conv of width 4
#: (Nemotron 3 Nano: 64 heads of 64, 8 groups, state 128, conv 4).
SSM_HEADS, SSM_INNER, SSM_GROUPS, SSM_STATE, SSM_CONV = 4, 2 * N_EMBD, 2, 16, 4
#: Attention: grouped-query, 2 query heads of 64 sharing 1 KV head, no RoPE (Nemotron-H uses none).
H_HEAD, H_HEAD_KV, H_HEAD_DIM = 2, 1, 64
#: MoE: 4 routed experts, top-2 by sigmoid score, one shared expert, relu^2 (Nemotron 3 Nano: 128, top-6, 1).
N_EXPERT, N_EXPERT_USED, N_FF_EXP, N_FF_SHEXP = 4, 2, 64, 128

#: The text decoders write_test_model can write; the first is the default.
DECODERS = ("nemotron_h_moe", "llama")

#: Vision encoder: a 64x64 image in 8x8 patches -> 64 patches -> 2x2 merge -> 16 LLM tokens per image.
V_EMBD, V_HEAD, V_FF, V_LAYERS = 32, 2, 64, 1
IMAGE_SIZE, PATCH_SIZE, MERGE = 64, 8, 2
V_REGISTERS = 2
PROJ_HIDDEN = 96

#: Audio encoder (Parakeet): 16 mel bins, 3 stride-2 convs (subsampling 8) -> 12.5 LLM tokens per second.
A_EMBD, A_HEAD, A_FF, A_LAYERS = 32, 2, 64, 1
N_MEL, A_CHANNELS, A_CONV_KERNEL = 16, 8, 5
N_FFT, WINDOW_LEN = 512, 400

def reasoning_chat_template(content: str = "{{ message['content'] }}") -> str:
    """A chat template shaped like Nemotron 3 Nano's: ChatML turns, thinking on by default (`enable_thinking`), the
    thinking of turns before the last user message dropped (`<think></think>` in its place), declared tools in the
    system turn, tool calls as `<tool_call>` JSON, tool results in `tool` turns. `content` is the Jinja that
    writes a message's content (the mlx test model's also writes media parts)."""
    return (
        "{%- set thinking = enable_thinking if enable_thinking is defined else true -%}"
        "{%- set ns = namespace(last_user=-1) -%}"
        "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if tools or messages[0]['role'] == 'system' -%}"
        "{{ '<|im_start|>system\n' }}"
        "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] }}{%- endif -%}"
        "{%- if tools -%}{{ '\n\n# Tools\n<tools>\n' }}"
        "{%- for tool in tools -%}{{ tool | tojson }}{{ '\n' }}{%- endfor -%}"
        "{{ '</tools>\nTo call a tool, write <tool_call>\n{\"name\": NAME, \"arguments\": ARGUMENTS}\n</tool_call>' }}"
        "{%- endif -%}{{ '<|im_end|>\n' }}"
        "{%- endif -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "{{ '<|im_start|>assistant\n' }}"
        "{%- if loop.index0 > ns.last_user and message.get('reasoning_content') -%}"
        "{{ '<think>\n' + message['reasoning_content'] + '\n</think>\n' }}"
        "{%- else -%}{{ '<think></think>' }}{%- endif -%}"
        + content +
        "{%- for call in message.get('tool_calls') or [] -%}"
        "{{ '\n<tool_call>\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
        "{{ call['function']['arguments'] | tojson }}{{ '}\n</tool_call>' }}"
        "{%- endfor -%}{{ '<|im_end|>\n' }}"
        "{%- elif message['role'] != 'system' or not loop.first -%}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}" + content + "{{ '<|im_end|>\n' }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}"
        "{%- if thinking -%}{{ '<think>\n' }}{%- else -%}{{ '<think></think>' }}{%- endif -%}"
        "{%- endif -%}"
    )


CHAT_TEMPLATE = reasoning_chat_template()

_NORMAL_WORDS = (
    "the a an and of to in is it you that was for on are with as I his they be at one have this from or had by "
    "hello world what image sound describe say hear see color red green blue yes no please thank user assistant "
    "system"
).split()


_ROLE_NAMES = ["system", "user", "assistant"]


@dataclass(frozen=True)
class TestModelPaths:
    """Where `write_test_model` put the files (mmproj is None when neither encoder was asked for)."""

    __test__ = False  # not a pytest test class despite the name

    text: Path
    mmproj: Path | None


def write_test_model(
    directory: Path,
    *,
    decoder: str = DECODERS[0],
    vision: bool = True,
    audio: bool = True,
    seed: int = 0,
    n_ctx_train: int = 32768,
) -> TestModelPaths:
    """Write the text GGUF (`decoder`: "nemotron_h_moe" or "llama") and, if any encoder is asked for, one mmproj
    GGUF into `directory`. The two decoders have different file names, so both can live in one folder.

    Deterministic for a given seed and arguments, so two calls give byte-identical files (fingerprints match).
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown test decoder {decoder!r}: one of {', '.join(DECODERS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if decoder == "llama":
        text_path = directory / "tiny-omni-text.gguf"
        _write_llama_model(text_path, rng, n_ctx_train)
    else:
        text_path = directory / "tiny-omni-nemotron-h-moe.gguf"
        _write_nemotron_h_moe_model(text_path, rng, n_ctx_train)
    if not (vision or audio):
        return TestModelPaths(text=text_path, mmproj=None)
    suffix = "vision-audio" if vision and audio else ("vision" if vision else "audio")
    mmproj_path = directory / f"mmproj-tiny-omni-{suffix}.gguf"
    _write_mmproj(mmproj_path, np.random.default_rng(seed + 1), vision=vision, audio=audio)
    return TestModelPaths(text=text_path, mmproj=mmproj_path)


# --------------------------------------------------------------------------------------------------- text model


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocab: specials, 256 byte-fallback tokens, some pieces, ChatML control tokens."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += [chr(c) for c in range(ord("A"), ord("Z") + 1)] + list("0123456789.,!?:;'\"-\n")
    # SentencePiece only merges two adjacent pieces into one the vocab holds, so each word comes with all its
    # prefixes: that is what makes "▁hello" one token, and the ChatML role names after <|im_start|> too
    # (no space before them), as in a real tokenizer.
    words = ["\u2581" + w for w in _NORMAL_WORDS] + _ROLE_NAMES
    pieces += list(dict.fromkeys(w[:k] for w in words for k in range(2, len(w) + 1)))
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [gguf.TokenType.CONTROL] * 2
    # Longer pieces score higher so the SentencePiece merge prefers whole words over letters.
    scores = [0.0] * 259 + [-10.0 + len(p) for p in pieces] + [0.0, 0.0]
    return tokens, scores, [int(t) for t in types]


def _normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, gain: float = 1.0) -> np.ndarray:
    """Random weights scaled to keep activations around unit size (random weights must not wash media out)."""
    return (rng.standard_normal(shape) * gain / np.sqrt(fan_in)).astype(np.float32)


def _add_vocab(w: gguf.GGUFWriter) -> int:
    """The built-in SentencePiece vocab and the ChatML template; returns the vocab size."""
    tokens, scores, types = _vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)  # as modern SentencePiece models (Gemma): no "▁" glued after special tokens
    w.add_chat_template(CHAT_TEMPLATE)
    return len(tokens)


def _write_llama_model(path: Path, rng: np.random.Generator, n_ctx_train: int) -> None:
    """The attention-only decoder: 2 llama blocks (RoPE attention + SwiGLU), tied embeddings."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-omni-test")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    n_vocab = _add_vocab(w)

    f16 = np.float16
    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, N_EMBD)).astype(f16))
    for i in range(N_LAYER):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", np.ones(N_EMBD, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"{p}.{name}.weight", _normal(rng, (N_EMBD, N_EMBD), N_EMBD).astype(f16))
        w.add_tensor(f"{p}.ffn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(f"{p}.ffn_gate.weight", _normal(rng, (N_FF, N_EMBD), N_EMBD).astype(f16))
        w.add_tensor(f"{p}.ffn_up.weight", _normal(rng, (N_FF, N_EMBD), N_EMBD).astype(f16))
        w.add_tensor(f"{p}.ffn_down.weight", _normal(rng, (N_EMBD, N_FF), N_FF).astype(f16))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    _finish(w)


def _write_nemotron_h_moe_model(path: Path, rng: np.random.Generator, n_ctx_train: int) -> None:
    """The hybrid decoder, keys and layout as llama.cpp's converter writes Nemotron-H MoE (conversion/nemotron.py).

    Every block is one pre-RMSNorm + one mixer (Mamba2, attention or MoE) + the residual, as in the target.
    """
    pattern = HYBRID_PATTERN
    w = gguf.GGUFWriter(str(path), "nemotron_h_moe")
    w.add_name("tiny-omni-test-nemotron-h-moe")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(len(pattern))
    w.add_feed_forward_length([N_FF_EXP if kind == "E" else 0 for kind in pattern])
    w.add_head_count(H_HEAD)
    w.add_head_count_kv([H_HEAD_KV if kind == "*" else 0 for kind in pattern])
    w.add_key_length(H_HEAD_DIM)
    w.add_value_length(H_HEAD_DIM)
    w.add_layer_norm_eps(1e-5)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_ssm_conv_kernel(SSM_CONV)
    w.add_ssm_state_size(SSM_STATE)
    w.add_ssm_group_count(SSM_GROUPS)
    w.add_ssm_inner_size(SSM_INNER)
    w.add_ssm_time_step_rank(SSM_HEADS)  # llama.cpp reads the number of Mamba2 heads from this key
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_EXPERT_USED)
    w.add_expert_feed_forward_length(N_FF_EXP)
    w.add_expert_shared_feed_forward_length(N_FF_SHEXP)
    w.add_expert_shared_count(1)
    w.add_expert_weights_norm(True)
    w.add_expert_weights_scale(1.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    n_vocab = _add_vocab(w)

    f16 = np.float16
    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, N_EMBD)).astype(f16))
    for i, kind in enumerate(pattern):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", np.ones(N_EMBD, np.float32))  # every block's pre-norm
        if kind == "M":
            _add_mamba2(w, rng, p)
        elif kind == "*":
            q_width = H_HEAD * H_HEAD_DIM
            w.add_tensor(f"{p}.attn_q.weight", _normal(rng, (q_width, N_EMBD), N_EMBD).astype(f16))
            for name in ("attn_k", "attn_v"):
                w.add_tensor(f"{p}.{name}.weight",
                             _normal(rng, (H_HEAD_KV * H_HEAD_DIM, N_EMBD), N_EMBD).astype(f16))
            w.add_tensor(f"{p}.attn_output.weight", _normal(rng, (N_EMBD, q_width), q_width).astype(f16))
        else:
            _add_moe(w, rng, p)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    _finish(w)


def _add_mamba2(w: gguf.GGUFWriter, rng: np.random.Generator, p: str) -> None:
    """One Mamba2 mixer: in_proj -> causal conv over x,B,C -> selective scan -> gated grouped RMSNorm -> out_proj.

    dt and A are initialised as Mamba does (dt in [1e-3, 1e-1] through softplus, A = -[1, 16]): the state then
    remembers for tens of tokens, so what an image leaves in it still shows in the logits after the question.
    """
    f16 = np.float16
    conv_width = SSM_INNER + 2 * SSM_GROUPS * SSM_STATE  # x, B and C go through the conv
    in_width = SSM_INNER + conv_width + SSM_HEADS  # z (gate), xBC, dt
    w.add_tensor(f"{p}.ssm_in.weight", _normal(rng, (in_width, N_EMBD), N_EMBD).astype(f16))
    w.add_tensor(f"{p}.ssm_conv1d.weight", _normal(rng, (conv_width, SSM_CONV), SSM_CONV))
    w.add_tensor(f"{p}.ssm_conv1d.bias", np.zeros(conv_width, np.float32))
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), SSM_HEADS))
    w.add_tensor(f"{p}.ssm_dt.bias", (dt + np.log(-np.expm1(-dt))).astype(np.float32))  # softplus^-1(dt)
    w.add_tensor(f"{p}.ssm_a", -rng.uniform(1.0, 16.0, (SSM_HEADS, 1)).astype(np.float32))
    w.add_tensor(f"{p}.ssm_d", np.ones((SSM_HEADS, 1), np.float32))
    w.add_tensor(f"{p}.ssm_norm.weight", np.ones((SSM_GROUPS, SSM_INNER // SSM_GROUPS), np.float32))
    w.add_tensor(f"{p}.ssm_out.weight", _normal(rng, (N_EMBD, SSM_INNER), SSM_INNER).astype(f16))


def _add_moe(w: gguf.GGUFWriter, rng: np.random.Generator, p: str) -> None:
    """One MoE feed-forward: a sigmoid router (+ score bias) picking N_EXPERT_USED relu^2 experts, plus the shared
    expert every token goes through."""
    f16 = np.float16
    w.add_tensor(f"{p}.ffn_gate_inp.weight", _normal(rng, (N_EXPERT, N_EMBD), N_EMBD, 2.0))
    w.add_tensor(f"{p}.exp_probs_b.bias", np.zeros(N_EXPERT, np.float32))
    w.add_tensor(f"{p}.ffn_up_exps.weight", _normal(rng, (N_EXPERT, N_FF_EXP, N_EMBD), N_EMBD).astype(f16))
    w.add_tensor(f"{p}.ffn_down_exps.weight", _normal(rng, (N_EXPERT, N_EMBD, N_FF_EXP), N_FF_EXP).astype(f16))
    w.add_tensor(f"{p}.ffn_up_shexp.weight", _normal(rng, (N_FF_SHEXP, N_EMBD), N_EMBD).astype(f16))
    w.add_tensor(f"{p}.ffn_down_shexp.weight", _normal(rng, (N_EMBD, N_FF_SHEXP), N_FF_SHEXP).astype(f16))


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ------------------------------------------------------------------------------------------------------- mmproj


def _write_mmproj(path: Path, rng: np.random.Generator, *, vision: bool, audio: bool) -> None:
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("tiny-omni-test-mmproj")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_bool("clip.has_vision_encoder", vision)
    w.add_bool("clip.has_audio_encoder", audio)
    if vision:
        _add_vision(w, rng)
    if audio:
        _add_audio(w, rng, with_dummy_vision_mlp=not vision)
    _finish(w)


def _add_encoder_hparams(w: gguf.GGUFWriter, prefix: str, n_embd: int, n_ff: int, n_layer: int, n_head: int) -> None:
    w.add_uint32(f"clip.{prefix}.embedding_length", n_embd)
    w.add_uint32(f"clip.{prefix}.feed_forward_length", n_ff)
    w.add_uint32(f"clip.{prefix}.block_count", n_layer)
    w.add_uint32(f"clip.{prefix}.attention.head_count", n_head)
    w.add_uint32(f"clip.{prefix}.projection_dim", N_EMBD)
    w.add_float32(f"clip.{prefix}.attention.layer_norm_epsilon", 1e-5)


def _add_norm(w: gguf.GGUFWriter, name: str, width: int) -> None:
    w.add_tensor(f"{name}.weight", np.ones(width, np.float32))
    w.add_tensor(f"{name}.bias", np.zeros(width, np.float32))


def _add_vision(w: gguf.GGUFWriter, rng: np.random.Generator) -> None:
    """RADIO-style ViT with registers, then pixel-shuffle 2x2 + RMSNorm + relu^2 MLP (nemotron_v2_vl)."""
    w.add_string("clip.vision.projector_type", "nemotron_v2_vl")
    _add_encoder_hparams(w, "vision", V_EMBD, V_FF, V_LAYERS, V_HEAD)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    w.add_uint32("clip.vision.projector.scale_factor", MERGE)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.25, 0.25, 0.25])
    w.add_bool("clip.use_gelu", True)

    n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    patch_in = 3 * PATCH_SIZE * PATCH_SIZE
    w.add_tensor("v.patch_embd.weight", _normal(rng, (V_EMBD, 3, PATCH_SIZE, PATCH_SIZE), patch_in, 2.0))
    w.add_tensor("v.patch_embd.bias", np.zeros(V_EMBD, np.float32))
    w.add_tensor("v.position_embd.weight", _normal(rng, (n_patches, V_EMBD), 1, 0.1))
    w.add_tensor("v.class_embd", _normal(rng, (V_REGISTERS, V_EMBD), 1, 0.5))
    for i in range(V_LAYERS):
        p = f"v.blk.{i}"
        _add_norm(w, f"{p}.ln1", V_EMBD)
        _add_norm(w, f"{p}.ln2", V_EMBD)
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"{p}.{name}.weight", _normal(rng, (V_EMBD, V_EMBD), V_EMBD))
            w.add_tensor(f"{p}.{name}.bias", np.zeros(V_EMBD, np.float32))
        w.add_tensor(f"{p}.ffn_up.weight", _normal(rng, (V_FF, V_EMBD), V_EMBD))
        w.add_tensor(f"{p}.ffn_down.weight", _normal(rng, (V_EMBD, V_FF), V_FF))
    merged = V_EMBD * MERGE * MERGE
    w.add_tensor("mm.model.mlp.0.weight", np.ones(merged, np.float32))
    w.add_tensor("mm.model.mlp.1.weight", _normal(rng, (PROJ_HIDDEN, merged), merged, 2.0))
    w.add_tensor("mm.model.mlp.3.weight", _normal(rng, (N_EMBD, PROJ_HIDDEN), PROJ_HIDDEN, 2.0))


def _mel_filters() -> np.ndarray:
    """Triangular mel-like filters, (N_MEL, N_FFT/2+1) flattened as the parakeet preprocessor reads them."""
    n_bins = N_FFT // 2 + 1
    edges = np.geomspace(2, n_bins - 1, N_MEL + 2)
    bins = np.arange(n_bins, dtype=np.float64)
    filters = np.zeros((N_MEL, n_bins))
    for m in range(N_MEL):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        filters[m] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return filters.astype(np.float32).reshape(-1)


def _add_audio(w: gguf.GGUFWriter, rng: np.random.Generator, *, with_dummy_vision_mlp: bool) -> None:
    """Parakeet: conv pre-encoder (subsampling 8), conformer blocks, RMSNorm + relu^2 MLP projection."""
    w.add_string("clip.audio.projector_type", "parakeet")
    _add_encoder_hparams(w, "audio", A_EMBD, A_FF, A_LAYERS, A_HEAD)
    w.add_uint32("clip.audio.num_mel_bins", N_MEL)
    w.add_uint32("clip.audio.subsampling_factor", 8)
    w.add_uint32("clip.audio.conv_kernel_size", A_CONV_KERNEL)

    w.add_tensor("a.mel_filters", _mel_filters())
    w.add_tensor("a.window", np.hanning(WINDOW_LEN).astype(np.float32))
    c = A_CHANNELS
    w.add_tensor("a.conv1d.0.weight", _normal(rng, (c, 1, 3, 3), 9))
    w.add_tensor("a.conv1d.0.bias", np.zeros((c, 1, 1), np.float32))
    for i in (2, 5):  # depthwise 3x3, stride 2
        w.add_tensor(f"a.conv1d.{i}.weight", _normal(rng, (c, 1, 3, 3), 9))
        w.add_tensor(f"a.conv1d.{i}.bias", np.zeros((c, 1, 1), np.float32))
    for i in (3, 6):  # pointwise 1x1
        w.add_tensor(f"a.conv1d.{i}.weight", _normal(rng, (c, c, 1, 1), c, 1.5))
        w.add_tensor(f"a.conv1d.{i}.bias", np.full((c, 1, 1), 0.1, np.float32))
    freq_out = N_MEL // 8
    w.add_tensor("a.pre_encode.out.weight", _normal(rng, (A_EMBD, freq_out * c), freq_out * c, 2.0))
    w.add_tensor("a.pre_encode.out.bias", np.zeros(A_EMBD, np.float32))

    d_head = A_EMBD // A_HEAD
    for i in range(A_LAYERS):
        p = f"a.blk.{i}"
        for norm in ("ffn_norm", "ln1", "norm_conv", "conv_norm", "ffn_norm_1", "ln2"):
            _add_norm(w, f"{p}.{norm}", A_EMBD)
        w.add_tensor(f"{p}.ffn_up.weight", _normal(rng, (A_FF, A_EMBD), A_EMBD))
        w.add_tensor(f"{p}.ffn_down.weight", _normal(rng, (A_EMBD, A_FF), A_FF))
        w.add_tensor(f"{p}.ffn_up_1.weight", _normal(rng, (A_FF, A_EMBD), A_EMBD))
        w.add_tensor(f"{p}.ffn_down_1.weight", _normal(rng, (A_EMBD, A_FF), A_FF))
        for name in ("attn_q", "attn_k", "attn_v", "attn_out", "linear_pos"):
            w.add_tensor(f"{p}.{name}.weight", _normal(rng, (A_EMBD, A_EMBD), A_EMBD))
        w.add_tensor(f"{p}.pos_bias_u", _normal(rng, (A_HEAD, d_head), 1, 0.1))
        w.add_tensor(f"{p}.pos_bias_v", _normal(rng, (A_HEAD, d_head), 1, 0.1))
        w.add_tensor(f"{p}.conv_pw1.weight", _normal(rng, (2 * A_EMBD, A_EMBD), A_EMBD))
        w.add_tensor(f"{p}.conv_dw.weight", _normal(rng, (A_EMBD, A_CONV_KERNEL), A_CONV_KERNEL))
        w.add_tensor(f"{p}.conv_norm_mean", np.zeros(A_EMBD, np.float32))
        w.add_tensor(f"{p}.conv_norm_var", np.ones(A_EMBD, np.float32))
        w.add_tensor(f"{p}.conv_pw2.weight", _normal(rng, (A_EMBD, A_EMBD), A_EMBD))
    w.add_tensor("mm.a.norm_pre.weight", np.ones(A_EMBD, np.float32))
    w.add_tensor("mm.a.mlp.1.weight", _normal(rng, (PROJ_HIDDEN, A_EMBD), A_EMBD, 2.0))
    w.add_tensor("mm.a.mlp.2.weight", _normal(rng, (N_EMBD, PROJ_HIDDEN), PROJ_HIDDEN, 2.0))
    if with_dummy_vision_mlp:
        # An audio-only parakeet file still needs these (measured: loading fails without them).
        w.add_tensor("mm.model.mlp.0.weight", np.ones(4, np.float32))
        w.add_tensor("mm.model.mlp.1.weight", np.zeros((4, 4), np.float32))
        w.add_tensor("mm.model.mlp.3.weight", np.zeros((N_EMBD, 4), np.float32))
