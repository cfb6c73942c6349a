"""Merge high: add a LoRA adapter into the base's original full-precision weights, one shard at a time.

W = W0 + s·B·A with s = alpha/r (rsLoRA: alpha/sqrt(r)); DoRA then rescales each output row to its learned
magnitude. W0 comes from the base checkpoint on disk, never from the NF4-dequantized copy training saw: that copy
is off by the 4-bit rounding error, which is usually larger than the update itself. The merge reports how far a
merge into the NF4-dequantized base would have landed from this one, so the difference is visible.

Memory: tensors are read and written in row chunks with plain file reads (see `convert.safetensors_file`), so the
peak is the adapter plus a few chunks, whatever the model size. Output keeps the base's shard layout.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from convert.adapter_file import Adapter, load_adapter
from convert.finite import refuse_non_finite
from convert.fingerprint import check_adapter_base
from convert.safetensors_file import SafetensorsFile, SafetensorsStreamWriter
from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_dir, refuse_own_input
from edgeft.merge_plan import TensorJob, plan_merge, read_config

logger = logging.getLogger("edgeft.merge")

DTYPE_CHOICES: dict[str, str | None] = {"auto": None, "bf16": "BF16", "f16": "F16", "f32": "F32",
                                        "bfloat16": "BF16", "float16": "F16", "float32": "F32"}
CHUNK_ELEMENTS = 1 << 22  # rows per chunk are chosen so one f32 chunk is ~16 MB
NF4_BLOCK = 64  # QLoRA's NF4 block size
# QLoRA (transformers' bitsandbytes integration) leaves the output head in full precision.
NF4_SKIPPED = ("lm_head.weight",)
# Carried from the base as they are (the license and card with its license front matter matter for a release).
BASE_FILES = ("generation_config.json", "README.md", "LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE")
# The tokenizer comes as one set, from the adapter when `edgeft train` saved one there (it adds tokens), otherwise
# from the base; mixing the two could pair a grown vocabulary with the old tokenizer.json.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json")
# The chat template the adapter was trained with (`edgeft train` writes chat_template.jinja) wins over the base's.
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass
class NF4Comparison:
    """Accumulates ||merged_nf4 - merged||², ||merged||² and ||ΔW||² over every LoRA-merged linear weight."""

    diff_sq: float = 0.0
    merged_sq: float = 0.0
    delta_sq: float = 0.0
    per_tensor: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        relative = math.sqrt(self.diff_sq / self.merged_sq) if self.merged_sq else 0.0
        versus_update = math.sqrt(self.diff_sq / self.delta_sq) if self.delta_sq else 0.0
        worst = max(self.per_tensor.items(), key=lambda item: item[1]) if self.per_tensor else (None, 0.0)
        return {"relative_error": relative, "error_over_update": versus_update,
                "worst_tensor": worst[0], "worst_relative_error": worst[1]}


def _resolve_dtype(dtype: str) -> str | None:
    try:
        return DTYPE_CHOICES[dtype.lower()]
    except KeyError:
        raise EdgeftError(f"--dtype {dtype!r} is not one of auto, bf16, f16, f32") from None


def _rows_per_chunk(cols: int) -> int:
    rows = max(1, CHUNK_ELEMENTS // max(cols, 1))
    return rows


def _nf4_roundtrip(weight):
    """What QLoRA's Linear4bit holds: NF4 with double-quantized absmax, as `Params4bit` quantizes a weight."""
    import bitsandbytes.functional as bnb_functional

    packed, state = bnb_functional.quantize_4bit(weight, blocksize=NF4_BLOCK, quant_type="nf4", compress_statistics=True)
    return bnb_functional.dequantize_4bit(packed, state)


def _apply_pair_(weight, delta, magnitude) -> None:
    """In place: weight += ΔW, then DoRA's rescale W' = m / ||W0 + ΔW||_row * (W0 + ΔW) (norm over each output
    row, as peft merges it) when there is a magnitude. In place because these are the merge's largest buffers."""
    import torch

    weight.add_(delta)
    if magnitude is not None:
        weight.mul_((magnitude / torch.linalg.norm(weight, dim=1)).unsqueeze(1))


def _source_rows(job: TensorJob, base: SafetensorsFile, adapter: Adapter, start: int, stop: int, new_row):
    """Rows [start, stop) the merge starts from; rows past the base's vocabulary (grown for trained token rows, see
    `edgeft.merge_plan._grow_for_token_rows`) start as `new_row`."""
    import torch

    # An untied lm_head starts from whatever its tied embedding started from (the saved, possibly resized, copy).
    replacement = adapter.full.get(job.name, adapter.full.get(job.source))
    if replacement is not None:
        # a copy: the merge works in place and the adapter's arrays must stay as loaded
        return torch.from_numpy(np.array(replacement[start:stop] if replacement.ndim else replacement, copy=True))
    if not base.shape(job.source):
        return torch.from_numpy(base.read(job.source))
    base_rows = base.shape(job.source)[0]
    rows = base.read_rows(job.source, start, min(stop, base_rows)) if start < base_rows else None
    if stop > base_rows:
        grown = np.broadcast_to(new_row, (stop - max(start, base_rows), *new_row.shape))
        rows = grown.copy() if rows is None else np.concatenate([rows, grown])
    return torch.from_numpy(rows)


def _new_row(job: TensorJob, base: SafetensorsFile, adapter: Adapter, token_rows) -> np.ndarray | None:
    """What a row the merge adds to the base's vocabulary starts as: transformers' resize_token_embeddings
    (mean_resizing, which training used) starts it at the mean row, plus noise of 1e-9 times the rows' covariance.
    Every row `edgeft train` adds is trained and saved, so this is only what a row the adapter did not save keeps."""
    shape = base.shape(job.source)
    if job.name in adapter.full or job.source in adapter.full or not shape or job.out_shape[0] <= shape[0]:
        return None
    saved = set(token_rows[0].tolist()) if token_rows is not None else set()
    if all(index in saved for index in range(shape[0], job.out_shape[0])):
        return np.zeros(shape[1:], dtype=np.float32)
    total = np.zeros(shape[1:], dtype=np.float64)
    step = _rows_per_chunk(math.prod(shape[1:]))
    for start in range(0, shape[0], step):
        total += base.read_rows(job.source, start, min(shape[0], start + step)).sum(axis=0, dtype=np.float64)
    return (total / shape[0]).astype(np.float32)


def _write_job(job: TensorJob, base: SafetensorsFile, adapter: Adapter, writer: SafetensorsStreamWriter,
               nf4: NF4Comparison | None) -> None:
    import torch

    torch_dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    pair = adapter.pairs.get(job.name)
    bias_pair = next((p for p in adapter.pairs.values() if p.bias is not None and f"{p.module}.bias" == job.name), None)
    token_rows = adapter.token_rows.get(job.name)
    touched = (pair or bias_pair or token_rows is not None or job.name in adapter.full or job.source != job.name
               or job.out_shape != base.shape(job.source))
    if not touched and job.out_dtype == base.dtype(job.source):
        rows = job.out_shape[0] if job.out_shape else 1
        step = _rows_per_chunk(math.prod(job.out_shape[1:]) if job.out_shape else 1)
        for start in range(0, rows, step):  # untouched and same dtype: copy bytes, no decode
            writer.write(job.name, base.read_bytes(job.name, start, min(rows, start + step)) if job.out_shape
                         else base.read_bytes(job.name))
        if rows == 0:
            writer.write(job.name, b"")
        return
    if job.out_dtype not in torch_dtypes:
        raise EdgeftError(f"{base.path}: tensor {job.name} is {job.out_dtype}; only float tensors can be merged into")

    rows = job.out_shape[0] if job.out_shape else 1
    cols = math.prod(job.out_shape[1:]) if len(job.out_shape) > 1 else 1
    compare_nf4 = nf4 is not None and pair is not None and pair.kind == "linear" and job.name not in NF4_SKIPPED
    # Double quantization takes the mean of all absmax values of the tensor, so the NF4 round-trip needs the whole
    # tensor at once; that is one linear weight (never an embedding), small next to a shard.
    step = rows if compare_nf4 else (_rows_per_chunk(cols) if job.out_shape else 1)
    diff_sq = merged_sq = 0.0
    new_row = _new_row(job, base, adapter, token_rows)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        chunk = _source_rows(job, base, adapter, start, stop, new_row)
        if token_rows is not None:
            indices, values = token_rows
            inside = (indices >= start) & (indices < stop)
            chunk[torch.from_numpy(indices[inside] - start)] = torch.from_numpy(values[inside])
        if bias_pair is not None:
            chunk = chunk + bias_pair.scale * torch.from_numpy(bias_pair.bias[start:stop])
        if pair is not None:
            delta = torch.from_numpy(np.ascontiguousarray(pair.delta_rows(start, stop), dtype=np.float32))
            magnitude = None if pair.magnitude is None else torch.from_numpy(pair.magnitude[start:stop])
            low = _nf4_roundtrip(chunk) if compare_nf4 else None
            _apply_pair_(chunk, delta, magnitude)
            if low is not None:
                _apply_pair_(low, delta, magnitude)
                nf4.delta_sq += float(torch.linalg.vector_norm(delta)) ** 2
                del delta
                merged_sq += float(torch.linalg.vector_norm(chunk)) ** 2
                diff_sq += float(torch.linalg.vector_norm(low.sub_(chunk))) ** 2
                del low
        writer.write(job.name, _encoded(chunk, torch_dtypes[job.out_dtype], job))
    if rows == 0:
        writer.write(job.name, b"")
    if nf4 is not None and merged_sq:
        nf4.diff_sq += diff_sq
        nf4.merged_sq += merged_sq
        nf4.per_tensor[job.name] = math.sqrt(diff_sq / merged_sq)


def _encoded(chunk, dtype, job: TensorJob) -> np.ndarray:
    """The merged rows as the output's bytes. The inputs were judged finite as read; a merged value can still pass
    what the output type holds (65504 in F16)."""
    import torch

    data = (chunk.to(dtype) if chunk.dtype != dtype else chunk).contiguous().view(torch.uint8).reshape(-1).numpy()
    refuse_non_finite(data, job.name, "merge", stored=job.out_dtype,
                      advice=f"the merged weights do not fit {job.out_dtype}; merge with --dtype f32")
    return data


def _tokenizer_source(base_dir: Path, adapter_dir: Path) -> Path:
    return adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else base_dir


def _adapter_tokenizer_size(base_dir: Path, adapter_dir: Path, adapter: Adapter) -> int | None:
    """The length of the tokenizer saved with the adapter, which training resized the vocabulary to (None when the
    adapter has none, or no trainable token rows that could need it)."""
    if not adapter.token_rows or _tokenizer_source(base_dir, adapter_dir) == base_dir:
        return None
    from edgeft.data.masking import load_tokenizer

    return len(load_tokenizer(adapter_dir))


def _refuse_bos_drift(base_dir: Path, adapter_dir: Path) -> None:
    """The merged folder takes the adapter's tokenizer when it has one, and its GGUF then puts BOS before a prompt
    as that tokenizer says; training fed the BOS the base's says (`edgeft train` writes it into the adapter's
    tokenizer_config.json, which an adapter saved before it did lacks)."""
    from convert.vocab.special import bos_llama_cpp_adds

    if _tokenizer_source(base_dir, adapter_dir) == base_dir:
        return
    trained, saved = bos_llama_cpp_adds(base_dir), bos_llama_cpp_adds(adapter_dir)
    if trained != saved:
        raise EdgeftError(f"{adapter_dir / 'tokenizer_config.json'}: llama.cpp would put {_bos_words(saved)} before a "
                          f"prompt with this tokenizer but {_bos_words(trained)} with the base {base_dir}'s, which "
                          "training fed; "
                          f"set \"add_bos_token\": {json.dumps(trained is not None)} there, or train again")


def _bos_words(bos: str | None) -> str:
    return f"BOS {bos!r}" if bos is not None else "no BOS"


def _copy_side_files(base_dir: Path, adapter_dir: Path, out_dir: Path, config_changes: dict) -> None:
    config = read_config(base_dir)
    config.update(config_changes)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_source = _tokenizer_source(base_dir, adapter_dir)
    template_source = adapter_dir if any((adapter_dir / name).exists() for name in TEMPLATE_FILES) else tokenizer_source
    for source_dir, names in ((base_dir, BASE_FILES), (tokenizer_source, TOKENIZER_FILES),
                              (template_source, TEMPLATE_FILES)):
        for name in names:
            if (source_dir / name).exists():
                shutil.copyfile(source_dir / name, out_dir / name)
    from convert.vocab.chat_template import chat_template_of

    _one_template(out_dir, chat_template_of(template_source))


def _one_template(out_dir: Path, template: str | None) -> None:
    """Every template file of the merged folder says the trained template: chat_template.jinja (what transformers
    and our converter read first) and tokenizer_config.json's entry (what llama.cpp's own converter reads first)
    would otherwise pair the trained template with the base's."""
    if template is None:
        return
    (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    for name in ("tokenizer_config.json", "chat_template.json"):
        path = out_dir / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        entry = config.get("chat_template")
        if isinstance(entry, list):  # named templates: the trained one is the default, the others stay
            config["chat_template"] = [dict(e, template=template) if e.get("name") == "default" else e
                                       for e in entry if isinstance(e, dict)]
        elif entry is not None or name == "tokenizer_config.json":
            config["chat_template"] = template
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def merge_adapter(base_dir, adapter_dir, out_dir, *, dtype: str = "auto", overwrite: bool = False,
                  nf4_report: bool = True, progress: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Merge the LoRA adapter in `adapter_dir` into the full-precision base in `base_dir`; write a HF folder.

    dtype: "auto" keeps each tensor's stored dtype; "bf16"/"f16"/"f32" converts floating tensors.
    nf4_report: also merge every adapted weight into its NF4 round-trip and log the relative difference.
    log: where that line goes (default: the `edgeft.merge` logger at INFO).
    Writes `merge_report.json` (scales, tensors merged, NF4 comparison) beside the weights. Returns out_dir.
    """
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    out_dtype = _resolve_dtype(dtype)
    refuse_own_input(out_dir, {"base model folder": base_dir, "adapter folder": adapter_dir})
    adapter = load_adapter(adapter_dir)
    if not base_dir.is_dir():
        raise EdgeftError(f"{base_dir}: base model folder not found; pass a local HF folder with --base")
    shards, config_changes = plan_merge(base_dir, adapter, out_dtype,
                                        _adapter_tokenizer_size(base_dir, adapter_dir, adapter))
    check_adapter_base(adapter_dir, adapter.base_model, base_dir)  # same shapes can still be another model
    _refuse_bos_drift(base_dir, adapter_dir)
    nf4 = NF4Comparison() if nf4_report and adapter.pairs else None
    jobs_total = sum(len(jobs) for jobs in shards.values())
    from tqdm import tqdm

    # leave=False: a bar left on screen would run into the one-line error of a merge that fails
    bar = tqdm(total=jobs_total, desc="merge", unit="tensor", disable=not progress, leave=False)
    with bar, atomic_dir(out_dir, overwrite=overwrite) as tmp:
        weight_map: dict[str, str] = {}
        total_bytes = 0
        for shard, jobs in shards.items():
            base = SafetensorsFile(base_dir / shard)
            specs = [(job.name, job.out_dtype, job.out_shape) for job in jobs]
            with SafetensorsStreamWriter(tmp / shard, specs, base.metadata or None) as writer:
                for job in jobs:
                    _write_job(job, base, adapter, writer, nf4)
                    weight_map[job.name] = shard
                    bar.update(1)
            total_bytes += writer.total_bytes
        if len(shards) > 1 or (base_dir / "model.safetensors.index.json").exists():
            index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        _copy_side_files(base_dir, adapter_dir, tmp, config_changes)
        report = {
            "base": str(base_dir), "adapter": str(adapter_dir), "dtype": dtype,
            "use_rslora": bool(adapter.config.get("use_rslora")), "use_dora": bool(adapter.config.get("use_dora")),
            "lora_tensors": len(adapter.pairs), "replaced_tensors": sorted(adapter.full),
            "scales": sorted({round(pair.scale, 6) for pair in adapter.pairs.values()}),
            "config_changes": config_changes,
            "nf4_merge_comparison": nf4.summary() if nf4 is not None else None,
        }
        (tmp / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if nf4 is not None:
        summary = nf4.summary()
        (log or logger.info)(
            f"merged into the full-precision base; merging into the NF4-dequantized base instead would have moved "
            f"the merged weights by {100 * summary['relative_error']:.2f}% (relative L2), "
            f"{summary['error_over_update']:.1f}x the size of the LoRA update itself")
    return out_dir
