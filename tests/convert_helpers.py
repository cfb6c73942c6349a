"""Shared helpers for the converter tests: convert a fixture once per session, open it with llama.cpp, run HF."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tests import corpus
from tests.factory import build_model

# Mixed scripts, digits, contractions, emoji: a prompt that exercises the tokenizer and gives ~40-60 positions.
PROMPT = "Hello world! I'm sure it's 12345 — café Zürich, 你好世界 🙂\n    def f(x): return x"
# Converted files live for one test process (they take well under a second to remake).
# More positions for the F16 top-1 rate: on 50 positions a single near-tie flip already reads as 98%.
F16_PROMPTS = [PROMPT] + [text for text in corpus.training_text(lines=24, seed=7) if text.strip()][:6]
OUT_DIR = Path(tempfile.mkdtemp(prefix="edgeft-convert-tests-"))
atexit.register(shutil.rmtree, OUT_DIR, True)


_CONVERTED: dict[str, Path] = {}


def converted(arch: str, outtype: str = "f32", **build_kw) -> Path:
    """Convert a fixture model (cached per process); returns the GGUF path."""
    from convert import convert_model

    key = json.dumps([arch, outtype, build_kw], sort_keys=True)
    if key not in _CONVERTED:
        model_dir = build_model(arch, **build_kw)
        _CONVERTED[key] = convert_model(model_dir, OUT_DIR / f"{model_dir.name}-{outtype}.gguf", outtype=outtype)
    return _CONVERTED[key]


def open_llama(path: Path, **kw):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=2, verbose=False, **kw)


@functools.lru_cache(maxsize=None)
def hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def ggml_cpu_gelu():
    """GELU as ggml's CPU backend computes it: input rounded to fp16, looked up in an fp16 table (vec.h,
    GGML_GELU_FP16), so results carry fp16 rounding (~1e-3 on logits). Used to show what remains is the runtime's."""
    import torch

    class GgmlGelu(torch.nn.Module):
        def forward(self, x):
            y = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()
            return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))

    return GgmlGelu()


def hf_logits(model_dir: Path, ids: list[int], *, ggml_gelu: bool = False) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    if ggml_gelu:
        for layer in model.model.layers:
            layer.mlp.act_fn = ggml_cpu_gelu()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def llama_logits(gguf_path: Path, ids: list[int], *, f32_kv: bool = True) -> np.ndarray:
    # F32 KV cache: llama.cpp's default F16 cache alone moves logits by ~7e-3 on these models, which would hide
    # (or excuse) converter errors. type 0 = GGML_TYPE_F32. f32_kv=False: llama.cpp's default (F16) cache.
    llm = open_llama(gguf_path, logits_all=True, **({"type_k": 0, "type_v": 0} if f32_kv else {}))
    llm.eval(ids)
    scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return scores


# Variants real checkpoints use (converted with parity checks, and imported back): tied output (Llama 3.2 1B, SmolLM), Llama 3.1 rope scaling (rope_freqs tensor),
# linear rope scaling, Qwen2 tied in bf16 (Qwen2.5-0.5B), YaRN, Phi-3 LongRoPE.
CHECKPOINT_VARIANTS = {
    # transformers 5's other expert layout (save_original_format=False): fused 3-D gate_up_proj / down_proj.
    "qwen3moe-fused": ("qwen3moe", {"expert_layout": "fused"}),
    "mixtral-fused": ("mixtral", {"expert_layout": "fused"}),
    "llama-tied": ("llama", {"tie": True}),
    "llama-rope-llama3": ("llama", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    "llama-rope-linear": ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}}),
    "qwen2-tied-bf16": ("qwen2", {"tie": True, "dtype": "bfloat16"}),
    "qwen2-yarn": ("qwen2", {"max_position_embeddings": 4096, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 1024}}),
    # Phi-3 LongRoPE (rope_factors_short/long tensors + attention factor), context 4x the original.
    "phi3-longrope": ("phi3", {"max_position_embeddings": 4096, "original_max_position_embeddings": 1024,
                               "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0,
                                                   "original_max_position_embeddings": 1024,
                                                   "long_factor": [1.0 + 0.5 * i for i in range(8)],
                                                   "short_factor": [1.0 + 0.1 * i for i in range(8)]}}),
    # Gemma 3 4B-style linear rope scaling, on the global layers only (the local ones keep their own base).
    "gemma3-rope-linear": ("gemma3", {"rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0}}}),
    "granite-tied": ("granite", {"tie": True}),
}


def assert_refused(result, folder: Path, *needles: str) -> None:
    """A command refused bad input: exit 1, one `Error:` line holding every needle, nothing left in `folder`.
    A progress bar may have been drawn (and erased with \\r) before the failure; what stays on screen is after \\r."""
    assert result.exit_code == 1, result.output
    lines = [line.rsplit("\r", 1)[-1] for line in result.output.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not list(folder.iterdir()), f"left behind: {[p.name for p in folder.iterdir()]}"


def assert_same_tensor_data(ours: Path, theirs: Path) -> None:
    """Same type and bytes per tensor (the HF route writes its own metadata, so the headers may differ)."""
    from gguf import GGUFReader

    mine = {t.name: t for t in GGUFReader(ours).tensors}
    for tensor in GGUFReader(theirs).tensors:
        assert mine[tensor.name].tensor_type == tensor.tensor_type, tensor.name
        assert np.array_equal(np.asarray(mine[tensor.name].data).view(np.uint8),
                              np.asarray(tensor.data).view(np.uint8)), tensor.name
