"""Converter benchmark: a generated checkpoint with Qwen2.5-0.5B's shapes (hidden 896, 24 layers, vocab 151936,
bf16, ~1 GB) converted to F16 and Q8_0, each in a fresh child process; wall seconds (whole process, imports
included) and the child's peak RSS.

Targets, relative to llama.cpp's convert_hf_to_gguf.py on a 2-core machine (13.3 s and 1.17 GB peak
RSS for F16, 17.0 s for Q8_0): ours ≤ 0.8× its time and ≤ 0.5× its peak memory.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = {"f16": (13.3, 1.17e9), "q8_0": (17.0, 1.17e9)}

QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "vocab_size": 151936,
    "torch_dtype": "bfloat16", "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151645,
}


def _tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
        })
    return shapes


def _write_bf16_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> None:
    """Random bf16 weights written straight from numpy (top 16 bits of float32 normals), one chunk at a time."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes.items():
            remaining = math.prod(shape)
            scale = 1.0 if len(shape) == 1 else 0.02
            while remaining:
                n = min(remaining, 8 << 20)
                values = rng.standard_normal(n, dtype=np.float32) * np.float32(scale)
                if len(shape) == 1:
                    values += np.float32(1.0)
                f.write((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())
                remaining -= n
    tmp.replace(path)


def build_bench_model(cache_dir: Path) -> Path:
    """Generated once and cached: config, bf16 weights, and the fixture Qwen2 tokenizer (padded to 151936)."""
    model_dir = Path(cache_dir) / "qwen2.5-0.5b-shape-bf16"
    if (model_dir / ".complete").exists():
        return model_dir
    from tests.factory import build_tokenizer

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(QWEN25_05B, indent=2))
    for item in build_tokenizer("bpe-qwen2").iterdir():
        if item.is_file() and item.name != ".complete":
            shutil.copy2(item, model_dir / item.name)
    _write_bf16_safetensors(model_dir / "model.safetensors", _tensor_shapes(QWEN25_05B))
    (model_dir / ".complete").write_text("ok")
    return model_dir


CHILD = """
import json, resource, sys
from convert import convert_model
convert_model(sys.argv[1], sys.argv[2], outtype=sys.argv[3])
print(json.dumps({"peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024}))
"""


def measure(model_dir: Path, out_path: Path, outtype: str) -> dict:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), str(out_path), outtype],
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_bytes": result["peak_rss_bytes"],
            "size_bytes": out_path.stat().st_size}


def run(cache_dir: Path) -> list[dict]:
    model_dir = build_bench_model(Path(cache_dir))
    rows = []
    for outtype in ("f16", "q8_0"):
        out_path = Path(cache_dir) / f"bench-convert-{outtype}.gguf"
        figures = measure(model_dir, out_path, outtype)
        out_path.unlink()
        ref_seconds, ref_rss = REFERENCE[outtype]
        rows += [
            {"bench": "convert", "metric": f"Qwen2.5-0.5B-shape bf16 -> {outtype.upper()} wall",
             "value": round(figures["seconds"], 2), "unit": "s", "target": f"<= {0.8 * ref_seconds:.1f}",
             "ok": figures["seconds"] <= 0.8 * ref_seconds},
            {"bench": "convert", "metric": f"Qwen2.5-0.5B-shape bf16 -> {outtype.upper()} peak RSS",
             "value": round(figures["peak_rss_bytes"] / 1e9, 3), "unit": "GB", "target": f"<= {0.5 * ref_rss / 1e9:.3f}",
             "ok": figures["peak_rss_bytes"] <= 0.5 * ref_rss},
            # CPU time is what the conversion costs when the machine is not shared; wall time includes waiting.
            {"bench": "convert", "metric": f"Qwen2.5-0.5B-shape bf16 -> {outtype.upper()} CPU (user+sys)",
             "value": round(figures["cpu_seconds"], 2), "unit": "s", "target": None, "ok": None},
        ]
    return rows


if __name__ == "__main__":
    for row in run(ROOT / ".cache" / "bench"):
        print(row)
