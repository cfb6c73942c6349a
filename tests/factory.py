"""Offline fixture factory: tiny random-weight HF causal LMs with real tokenizers trained on the spot.

Used by the tests (through conftest's `fixture_model`) and by `make bench`. Nothing is downloaded: tokenizers are
trained here with `tokenizers` (byte-level BPE with Llama-3's or Qwen2's pre-tokenizer regex) or `sentencepiece`
(SPM with byte fallback, as Llama 2 / Mistral / Phi-3 / Gemma ship), and models are built from their transformers
config classes with random weights. This module builds the models; the tokenizers are in tests/factory_tokenizers.py
and the cache (keyed by a hash of the inputs and of the factory's source) in tests/factory_cache.py.

    from tests.factory import build_model
    model_dir = build_model("qwen2")                    # tiny: hidden 64, 2 layers
    model_dir = build_model("llama", aligned=True)      # hidden 256 / intermediate 512 for K-quant tests
    model_dir = build_model("mistral", shards=3, dtype="bfloat16")
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# build_tokenizer and _cached are part of this module's interface: conftest and the serve helpers import them from here.
from tests.factory_cache import _cached
from tests.factory_tokenizers import TOKENIZER_SPECS, build_tokenizer

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2")
# Dense, each with its own quirk: phi4mini is Phi3ForCausalLM as Phi-4-mini configures it (partial rotary, LongRoPE, o200k BPE, tied).
ARCHS += ("smollm3", "granite", "olmo2", "gemma3", "phi4mini")

DEFAULT_TOKENIZER = {
    "llama": "bpe-llama3",
    "mistral": "spm-mistral",
    "qwen2": "bpe-qwen2",
    "qwen3": "bpe-qwen2",
    "phi3": "spm-phi3",
    "gemma2": "spm-gemma",
    "smollm3": "bpe-llama3",  # SmolLM3 ships Llama 3's tokenizer
    "granite": "bpe-granite",
    "olmo2": "bpe-llama3",  # OLMo 2's dolma2 tokenizer splits with cl100k's regex, which is Llama 3's
    "gemma3": "spm-gemma",
    "phi4mini": "bpe-o200k",
}


def _base_config(arch: str, aligned: bool) -> dict:
    if aligned:
        dims = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2}
    else:
        dims = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2}
    common = {
        "num_hidden_layers": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        **dims,
    }
    rotary_pairs = 3 * dims["hidden_size"] // dims["num_attention_heads"] // 8  # phi4mini: 3/4 of head_dim, halved
    per_arch = {
        "llama": {},
        "mistral": {"sliding_window": None},
        "qwen2": {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "rms_norm_eps": 1e-6},
        "qwen3": {"head_dim": dims["hidden_size"] // dims["num_attention_heads"] * 2, "rms_norm_eps": 1e-6},
        "phi3": {"num_key_value_heads": dims["num_attention_heads"], "original_max_position_embeddings": 1024,
                 "sliding_window": None},
        "gemma2": {"head_dim": dims["hidden_size"] // dims["num_attention_heads"],
                   "query_pre_attn_scalar": dims["hidden_size"] // dims["num_attention_heads"],
                   "sliding_window": 64, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
                   "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh"},
        # 4 layers so that layer 3 is a NoPE layer (no_rope_layers follows from the default interval of 4).
        "smollm3": {"num_hidden_layers": 4, "rope_parameters": {"rope_type": "default", "rope_theta": 2000000.0}},
        # Multipliers as Granite 3.3 2B sets them, scaled to the tiny shape: the attention scale is not 1/sqrt(16).
        "granite": {"embedding_multiplier": 12.0, "attention_multiplier": 0.0625, "residual_multiplier": 0.22,
                    "logits_scaling": 2.0, "rms_norm_eps": 1e-6},
        "olmo2": {"rms_norm_eps": 1e-6},
        # A window shorter than the test prompts, one local and one global layer with their own rope bases.
        "gemma3": {"head_dim": dims["hidden_size"] // dims["num_attention_heads"],
                   "query_pre_attn_scalar": dims["hidden_size"] // dims["num_attention_heads"],
                   "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
                   "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                       "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
                   "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh"},
        # Phi-4-mini: 3/4 of each head rotated, LongRoPE (context 4x the original), GQA, tied embeddings.
        "phi4mini": {"partial_rotary_factor": 0.75, "max_position_embeddings": 4096,
                     "original_max_position_embeddings": 1024, "sliding_window": None,
                     "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                                         "original_max_position_embeddings": 1024,
                                         "long_factor": [1.0 + 0.5 * i for i in range(rotary_pairs)],
                                         "short_factor": [1.0 + 0.1 * i for i in range(rotary_pairs)]}},
    }
    per_arch.update(_moe_hybrid_configs(dims))
    return {**common, **per_arch[arch]}


CONFIG_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM"),
    "granite": ("GraniteConfig", "GraniteForCausalLM"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "phi4mini": ("Phi3Config", "Phi3ForCausalLM"),
}
# Families whose real checkpoints always tie the output to the embeddings.
ALWAYS_TIED = ("gemma2", "gemma3", "smollm3", "phi4mini")


# ---- MoE and hybrid: Qwen3-MoE (Qwen3's tokenizer), Mixtral (Mistral's), LFM2 (its own byte-level BPE).
ARCHS += ("qwen3moe", "mixtral", "lfm2")
MOE_ARCHS = ("qwen3moe", "mixtral")
ALWAYS_TIED += ("lfm2",)
DEFAULT_TOKENIZER.update({"qwen3moe": "bpe-qwen2", "mixtral": "spm-mistral", "lfm2": "bpe-lfm2"})
CONFIG_CLASSES.update({"qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
                       "mixtral": ("MixtralConfig", "MixtralForCausalLM"), "lfm2": ("Lfm2Config", "Lfm2ForCausalLM")})


def _moe_hybrid_configs(dims: dict) -> dict:
    hidden, ff = dims["hidden_size"], dims["intermediate_size"]
    return {
        # 4 experts, 2 per token; experts half the dense width (256 when aligned, so K-quants apply to ffn_down_exps)
        "qwen3moe": {"head_dim": hidden // dims["num_attention_heads"] * 2, "rms_norm_eps": 1e-6,
                     "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": ff // 2,
                     "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": []},
        # 8 experts as Mixtral 8x7B has: llama.cpp's quantizer has rules for exactly n_expert == 8
        "mixtral": {"num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None},
        # conv, attention: both kinds of layer; the MLP width follows HF's auto-adjust rule (512 -> 512, 160 -> 128)
        "lfm2": {"layer_types": ["conv", "full_attention"], "conv_L_cache": 3, "conv_bias": False, "norm_eps": 1e-5,
                 "block_auto_adjust_ff_dim": True, "block_ffn_dim_multiplier": 1.0,
                 "block_multiple_of": 256 if hidden >= 256 else 32},
    }


def _randomize(model, seed: int) -> None:
    """Random weights with enough spread that logits are far from uniform (so top-1 comparisons mean something)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                # Norm weights and biases off their defaults, so a converter that drops or mis-offsets them shows.
                base = 0.0 if ("bias" in name or "gemma" in type(model).__name__.lower()) else 1.0
                param.copy_(base + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=gen) * (1.5 / fan_in ** 0.5))


def _write_shards(state: dict, out: Path, shards: int) -> None:
    from safetensors.torch import save_file

    names = list(state)
    if shards <= 1:
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    per = -(-len(names) // shards)
    weight_map = {}
    total = 0
    for index in range(shards):
        part = names[index * per:(index + 1) * per]
        file_name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, str(out / file_name), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = file_name
            total += state[n].numel() * state[n].element_size()
    index_doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2))


def _build_model(arch: str, params: dict, out: Path) -> None:
    import torch
    import transformers

    tok_dir = build_tokenizer(params["tokenizer"])
    for item in tok_dir.iterdir():
        if item.is_file() and item.name != ".complete":
            shutil.copy2(item, out / item.name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    spec = TOKENIZER_SPECS[params["tokenizer"]]

    config_cls, model_cls = CONFIG_CLASSES[arch]
    config_kwargs = _base_config(arch, params["aligned"])
    config_kwargs.update(params["overrides"])
    ids = {role: (tokenizer.convert_tokens_to_ids(spec[role]) if spec.get(role) else None)
           for role in ("bos", "eos", "pad")}
    config_kwargs.setdefault("vocab_size", len(tokenizer))  # an override: embedding rows past the tokenizer
    config = getattr(transformers, config_cls)(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        tie_word_embeddings=params["tie"] or arch in ALWAYS_TIED,
        **config_kwargs,
    )
    config.architectures = [model_cls]
    torch.manual_seed(params["seed"])
    model = getattr(transformers, model_cls)(config).eval()
    _randomize(model, params["seed"])

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[params["dtype"]]
    model = model.to(dtype)
    config.dtype = params["dtype"]
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if params.get("expert_layout") == "per-expert":
        # What save_pretrained() writes by default: transformers 5's fused in-memory experts reverted to the
        # checkpoint's per-expert tensors (save_original_format=False would keep the fused 3-D ones).
        from transformers.core_model_loading import revert_weight_conversion

        state = {k: v.contiguous() for k, v in revert_weight_conversion(model, state).items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    _write_shards(state, out, params["shards"])
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    if params["license"]:
        (out / "README.md").write_text(
            f"---\nlicense: {params['license']}\n---\n\n# tiny-{arch}\n\nRandom-weight fixture built offline by edgeft's tests.\n"
        )


def build_model(
    arch: str,
    *,
    aligned: bool = False,
    tokenizer: str | None = None,
    shards: int = 1,
    dtype: str = "float32",
    tie: bool = False,
    seed: int = 0,
    license: str | None = "apache-2.0",
    expert_layout: str = "per-expert",
    **config_overrides,
) -> Path:
    """A cached local HF folder holding a tiny random-weight model of `arch` (one of ARCHS)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    params = {
        "arch": arch, "aligned": aligned, "tokenizer": tokenizer or DEFAULT_TOKENIZER[arch], "shards": shards,
        "dtype": dtype, "tie": tie, "seed": seed, "license": license, "overrides": config_overrides,
    }
    if arch in MOE_ARCHS:  # "per-expert" (save_pretrained's default) or "fused" (save_original_format=False)
        params["expert_layout"] = expert_layout
    return _cached(f"{arch}", params, lambda out: _build_model(arch, params, out))


def edited_model(arch: str, folder: Path, **changes) -> Path:
    """A copy of the `arch` fixture in FOLDER/model with `changes` applied to its config.json (for refusal tests)."""
    model = Path(folder) / "model"
    shutil.copytree(build_model(arch), model)
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))
    return model
