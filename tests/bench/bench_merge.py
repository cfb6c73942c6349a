"""Merge benchmark: a LoRA adapter (r=16, all linear layers) merged into a generated checkpoint with
Qwen2.5-0.5B's shapes (bf16, ~1 GB) saved in 4 shards, in a fresh child process.

Target: peak RSS minus the RSS of a process that has only imported torch ≤ 2× the largest shard +
the adapter (loading the whole model would need the full ~1 GB at least once). Also reported: wall time, and the
NF4 comparison the merge logs (how far a merge into the NF4-dequantized base would have landed).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.bench.bench_convert import QWEN25_05B, _tensor_shapes, _write_bf16_safetensors

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 4
RANK, ALPHA = 16, 32
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_sharded_model(cache_dir: Path) -> Path:
    """Qwen2.5-0.5B shapes in 4 shards of about equal bytes (the embedding alone is the largest), cached."""
    model_dir = Path(cache_dir) / "qwen2.5-0.5b-shape-bf16-4shards"
    if (model_dir / ".complete").exists():
        return model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    shapes = _tensor_shapes(QWEN25_05B)
    total = sum(math.prod(shape) * 2 for shape in shapes.values())
    groups: list[dict[str, tuple[int, ...]]] = [{} for _ in range(SHARDS)]
    running = 0
    for name, shape in shapes.items():
        groups[min(SHARDS - 1, running * SHARDS // total)][name] = shape
        running += math.prod(shape) * 2
    weight_map = {}
    for index, group in enumerate(groups):
        file_name = f"model-{index + 1:05d}-of-{SHARDS:05d}.safetensors"
        _write_bf16_safetensors(model_dir / file_name, group, seed=index)
        weight_map.update({name: file_name for name in group})
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (model_dir / "config.json").write_text(json.dumps(QWEN25_05B, indent=2))
    (model_dir / ".complete").write_text("ok")
    return model_dir


def build_adapter(cache_dir: Path, model_dir: Path) -> Path:
    """A peft-format LoRA adapter with random non-zero A and B for every linear layer (f32, as peft saves it)."""
    from safetensors.numpy import save_file

    adapter_dir = Path(cache_dir) / "qwen2.5-0.5b-shape-lora-r16"
    if (adapter_dir / ".complete").exists():
        return adapter_dir
    adapter_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in _tensor_shapes(QWEN25_05B).items():
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or module.rsplit(".", 1)[-1] not in TARGETS:
            continue
        rows, cols = shape
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((RANK, cols), dtype=np.float32) / np.float32(np.sqrt(cols))
        tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((rows, RANK), dtype=np.float32) * np.float32(1e-3)
    save_file(tensors, str(adapter_dir / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": list(TARGETS),
              "base_model_name_or_path": str(model_dir), "use_rslora": False, "use_dora": False,
              "fan_in_fan_out": False, "bias": "none", "task_type": "CAUSAL_LM"}
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (adapter_dir / ".complete").write_text("ok")
    return adapter_dir


BASELINE_CHILD = """
import json, resource
import torch
print(json.dumps({"peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024}))
"""

MERGE_CHILD = """
import json, resource, sys
import torch
from edgeft.merge import merge_adapter
merge_adapter(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True, log=lambda line: None)
print(json.dumps({"peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024}))
"""


def _child(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "child failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(cache_dir: Path) -> list[dict]:
    import shutil

    cache_dir = Path(cache_dir)
    model_dir = build_sharded_model(cache_dir)
    adapter_dir = build_adapter(cache_dir, model_dir)
    out_dir = cache_dir / "bench-merge-out"
    largest_shard = max(path.stat().st_size for path in model_dir.glob("*.safetensors"))
    adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    budget = 2 * largest_shard + adapter_bytes

    baseline = _child(BASELINE_CHILD)["peak_rss_bytes"]
    started = time.perf_counter()
    peak = _child(MERGE_CHILD, str(model_dir), str(adapter_dir), str(out_dir))["peak_rss_bytes"]
    seconds = time.perf_counter() - started
    report = json.loads((out_dir / "merge_report.json").read_text())["nf4_merge_comparison"]
    shutil.rmtree(out_dir, ignore_errors=True)
    over_torch = peak - baseline
    return [
        {"bench": "merge", "metric": "Qwen2.5-0.5B-shape 4 shards: peak RSS - torch-only RSS",
         "value": round(over_torch / 1e6, 1), "unit": "MB", "target": f"<= {budget / 1e6:.0f} (2x shard+adapter)",
         "ok": over_torch <= budget},
        {"bench": "merge", "metric": "largest shard / adapter size", "value": round(largest_shard / 1e6, 1),
         "unit": "MB", "target": f"adapter {adapter_bytes / 1e6:.1f} MB", "ok": None},
        {"bench": "merge", "metric": "merge wall (process, incl. imports + NF4 check)", "value": round(seconds, 1),
         "unit": "s", "target": None, "ok": None},
        {"bench": "merge", "metric": "NF4-base merge rel. error (info)",
         "value": round(100 * report["relative_error"], 3), "unit": "%", "target": None, "ok": None},
        {"bench": "merge", "metric": "NF4-base merge error / LoRA update norm (info)",
         "value": round(report["error_over_update"], 2), "unit": "x", "target": None, "ok": None},
    ]


if __name__ == "__main__":
    for row in run(ROOT / ".cache" / "bench"):
        print(row)
