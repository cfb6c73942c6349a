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
