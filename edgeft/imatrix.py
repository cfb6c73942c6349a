"""Importance matrix from your own conversations, computed in PyTorch, written in llama.cpp's imatrix format.

For every linear layer inside the transformer blocks, a forward pre-hook adds up x**2 over all tokens for each
input column (and counts the tokens) — what llama-imatrix collects from ggml's matmuls. K-quants use those
per-column weights to spend precision where activations are large. The weights are named by their GGUF names
(through convert.arch's name map), so `edgeft quantize --imatrix` and llama-quantize both accept the file.

    edgeft imatrix path/to/hf-model --data train.jsonl -o imatrix.gguf
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from convert.common.errors import EdgeftError
from convert.common.fsutil import refuse_own_input

DEFAULT_MAX_LEN = 2048  # tokens per conversation; longer ones are truncated (their start is kept)


def _render_token_ids(conversations, tokenizer, template: str, max_len: int) -> list[list[int]]:
    from runtime.hf_tokenizer import chat_ids
    from edgeft.data.templates import render_chat, special_tokens_of

    special = special_tokens_of(tokenizer)
    sequences = []
    for conversation in conversations:
        text = render_chat(template, conversation["messages"], special_tokens=special)
        # The ids training and llama.cpp feed: the template's own markers, and BOS in front when the GGUF adds it.
        ids = chat_ids(tokenizer, text)[:max_len]
        if ids:
            sequences.append(ids)
    return sequences


def _linear_names(model, arch) -> dict[str, str]:
    """HF module name -> GGUF weight name, for the linears in the blocks (llama-imatrix skips the output head)."""
    import torch

    names = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        gguf_name = arch.gguf_tensor_name(module_name + ".weight")
        if gguf_name and gguf_name.startswith("blk."):
            names[module_name] = gguf_name
    return names


def _calibration_ids(model_dir: Path, data_path: Path, chat_template: str | None, max_examples: int | None,
                     max_len: int) -> list[list[int]]:
    """The conversations of `data_path` rendered with the chat template and tokenized, one id list each."""
    from convert.common.jsonl import read_conversations
    from edgeft.data.masking import load_tokenizer
    from edgeft.data.templates import CHATML_TEMPLATE, template_for

    conversations = read_conversations(data_path)[: max_examples or None]
    if chat_template and len(chat_template) < 4096 and Path(chat_template).is_file():
        chat_template = Path(chat_template).read_text(encoding="utf-8")
    template = chat_template or template_for(model_dir, default=CHATML_TEMPLATE)
    sequences = _render_token_ids(conversations, load_tokenizer(model_dir), template, max_len)
    if not sequences:
        raise EdgeftError(f"{data_path}: no tokens to calibrate on; the conversations render to empty text")
    return sequences


def _load_float32_model(model_dir: Path, threads: int | None):
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    # float32 like llama-imatrix's activations; bf16 would round the squares we are about to sum.
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, device_map="cpu")
    model.eval()
    return model


class SquareSums:
    """Per GGUF weight name: the sum of x**2 over every token for each input column, and the token count."""

    def __init__(self):
        self.sums: dict = {}  # gguf name -> float64 tensor of column sums
        self.counts: dict[str, int] = {}

    def hook(self, gguf_name: str):
        import torch

        def add_squares(module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
            squares = (x * x).sum(dim=0)
            self.sums[gguf_name] = squares if gguf_name not in self.sums else self.sums[gguf_name] + squares
            self.counts[gguf_name] = self.counts.get(gguf_name, 0) + x.shape[0]

        return add_squares


def _run_calibration(model, names: dict[str, str], sequences, max_tokens: int | None, progress: bool):
    """Forward every sequence (up to max_tokens in all) with a pre-hook on each named linear.
    Returns (SquareSums, tokens used, sequences used)."""
    import torch
    from tqdm import tqdm

    squares = SquareSums()
    handles = [model.get_submodule(m).register_forward_pre_hook(squares.hook(g)) for m, g in names.items()]
    used_tokens = used_sequences = 0
    try:
        with torch.inference_mode():
            for ids in tqdm(sequences, desc="imatrix", unit="conv", disable=not progress, leave=False):
                if max_tokens and used_tokens >= max_tokens:
                    break
                if max_tokens:
                    ids = ids[: max_tokens - used_tokens]
                model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
                used_tokens += len(ids)
                used_sequences += 1
    finally:
        for handle in handles:
            handle.remove()
    return squares, used_tokens, used_sequences


def compute_imatrix(
    model_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    chat_template: str | None = None,
    max_examples: int | None = None,
    max_tokens: int | None = None,
    max_len: int = DEFAULT_MAX_LEN,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run the model over the conversations of `data_path` (JSONL) and write the imatrix GGUF to `out_path`.

    `chat_template`: template text (or a .jinja file) to render with; default: the model's own, else ChatML.
    `max_examples` / `max_tokens` bound the work (stop after that many conversations / tokens).
    """
    import numpy as np
    import torch

    from convert.arch import load_architecture
    from convert.quant.imatrix_file import ImatrixData, write_imatrix

    model_dir, data_path = Path(model_dir), Path(data_path)
    refuse_own_input(out_path, {"model folder": model_dir, "calibration data": data_path})
    arch = load_architecture(model_dir)
    sequences = _calibration_ids(model_dir, data_path, chat_template, max_examples, max_len)
    model = _load_float32_model(model_dir, threads)
    names = _linear_names(model, arch)
    if not names:
        raise EdgeftError(f"{model_dir}: found no block linear layers to calibrate; unsupported model layout")
    squares, used_tokens, used_sequences = _run_calibration(model, names, sequences, max_tokens, log is not None)
    data = ImatrixData(
        sums={name: squares.sums[name].to(torch.float32).numpy().reshape(1, -1) for name in sorted(squares.sums)},
        counts={name: np.array([squares.counts[name]], dtype=np.float32) for name in sorted(squares.sums)},
        datasets=[str(data_path)],
        # llama.cpp counts fixed-size chunks of tokens; ours are conversations, so report their number and mean length.
        chunk_count=used_sequences,
        chunk_size=max(1, round(used_tokens / max(1, used_sequences))),
    )
    write_imatrix(out_path, data)
    if log:
        log(f"wrote {out_path}: {len(data.sums)} weights, {used_sequences} conversations, {used_tokens} tokens")
    return Path(out_path)


def auto_imatrix(
    model_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    **kwargs,
) -> Path:
    """`--imatrix auto`: compute once per (model weights, data) pair and reuse the file from `cache_dir`."""
    model_dir, data_path = Path(model_dir), Path(data_path)
    if not data_path.is_file():
        raise EdgeftError(f"{data_path}: calibration data not found; --imatrix auto needs the training data path")
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.json")) + [data_path]:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(repr(sorted(kwargs.items())).encode())
    out = Path(cache_dir) / f"imatrix-{digest.hexdigest()[:16]}.gguf"
    if out.is_file():
        return out
    return compute_imatrix(model_dir, data_path, out, **kwargs)


def resolve_imatrix(
    spec: str | os.PathLike | None,
    model_dir: str | os.PathLike,
    *,
    data_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    **kwargs,
) -> Path | None:
    """What `--imatrix FILE|auto` means: None -> no imatrix; "auto" -> computed (once, cached) from `data_path`,
    the conversations the release trained on; anything else -> an existing imatrix file."""
    if spec is None or str(spec) == "":
        return None
    if str(spec).lower() == "auto":
        if data_path is None:
            raise EdgeftError("--imatrix auto needs calibration data: pass --imatrix-data train.jsonl "
                              "(the training conversations), or --imatrix FILE")
        cache = Path(cache_dir) if cache_dir else Path(model_dir) / ".edgeft-imatrix"
        return auto_imatrix(model_dir, data_path, cache, **kwargs)
    path = Path(spec)
    if not path.is_file():
        raise EdgeftError(f"{path}: imatrix file not found; pass an imatrix GGUF or --imatrix auto")
    return path
