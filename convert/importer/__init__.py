"""GGUF -> Hugging Face folder (`edgeft import`): the converter run backwards, with the converter's own tables.

    from convert.importer import import_gguf
    import_gguf("model.Q4_K_M.gguf", "hf-model/", dtype="f32")

Every tensor is dequantized by the gguf package (any type it reads), renamed by the architecture's tensor map read
backwards, and put back into the HF layout by the inverse of the architecture's rewrite (llama's q/k rotary
permutation, gemma2's norm +1); tensors the converter generates (rope frequency factors) go back into config.json.
Everything is checked and planned before the first byte is written, and written into a temporary folder that is
renamed when complete, so a refused or killed import leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from convert.arch import gguf_architecture
from convert.gguf_reader import GGUFFile
from convert.importer.metadata import GGUFMetadata, model_card
from convert.importer.safetensors_out import DTYPES, write_safetensors
from convert.importer.tokenizer import read_vocab, tokenizer_files
from convert.safetensors_file import INDEX_NAME
from convert.common.jsonl import check_input_file
from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_dir, refuse_foreign_folder, refuse_own_input

__all__ = ["import_gguf"]

TORCH_DTYPES = {"f32": "float32", "bf16": "bfloat16"}
# What an import writes (the weights, shards with their index, _write_files, the tokenizer's files): --overwrite
# replaces a folder that holds nothing else.
IMPORT_FILES = ("model.safetensors", "model-*-of-*.safetensors", INDEX_NAME, "config.json", "generation_config.json",
                "README.md", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja")


def _check_paths(gguf_path: Path, out_dir: Path, overwrite: bool, markers: tuple[str, ...]) -> None:
    check_input_file(gguf_path, "check the path", missing="no such GGUF file")
    refuse_own_input(out_dir, {"input GGUF": gguf_path})  # --overwrite of the folder holding it would delete it
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeftError(f"{out_dir}: exists and is not a folder; choose another -o")
    if out_dir.exists() and not overwrite:
        raise EdgeftError(f"{out_dir}: output folder already exists; pass --overwrite or choose another -o")
    refuse_foreign_folder(out_dir, what="a folder edgeft import wrote", markers=markers, outputs=IMPORT_FILES,
                          advice="choose another -o or empty it yourself")


def _generation_config(ids: dict[str, int]) -> dict:
    # llama.cpp stops at any end-of-generation token: EOS and the end-of-turn marker when it is another token.
    stops = [ids[role] for role in ("eos", "eot", "eom") if role in ids]
    stops = list(dict.fromkeys(stops))
    config = {"_from_model_config": False}
    if "bos" in ids:
        config["bos_token_id"] = ids["bos"]
    if stops:
        config["eos_token_id"] = stops[0] if len(stops) == 1 else stops
    if "pad" in ids:
        config["pad_token_id"] = ids["pad"]
    return config


def _sampling_defaults(meta: GGUFMetadata) -> dict:
    import gguf

    keys = gguf.Keys.General
    found = {hf: meta.get(key, None) for hf, key in (("temperature", keys.SAMPLING_TEMP), ("top_k", keys.SAMPLING_TOP_K),
                                                     ("top_p", keys.SAMPLING_TOP_P), ("min_p", keys.SAMPLING_MIN_P))}
    found = {hf: value for hf, value in found.items() if value is not None}
    return {"do_sample": True, **found} if found else {}


def import_gguf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "f32",
    overwrite: bool = False,
    markers: tuple[str, ...] = (),
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write the HF folder for `gguf_path` at `out_dir` (safetensors in `dtype`: f32 or bf16) and return its path.
    `overwrite` replaces a folder of an earlier import's files, or (`markers`) one the caller stamped as its own."""
    started = time.perf_counter()
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if dtype not in DTYPES:
        raise EdgeftError(f"--dtype {dtype}: not supported; choose one of {', '.join(DTYPES)}")
    _check_paths(gguf_path, out_dir, overwrite, markers)
    with GGUFFile(gguf_path) as source:
        meta = GGUFMetadata(source)
        arch, vocab, name = _read_model(meta, gguf_path, dtype)
        planned, slices = _plan_tensors(meta, arch, gguf_path)
        tokenizer = tokenizer_files(vocab, model_name=name, context_length=arch.config["max_position_embeddings"],
                                    source=str(gguf_path))
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            # the tokenizer files go beside the weights: the room check counts them too
            beside = sum(len(c if isinstance(c, bytes) else c.encode()) for c in tokenizer.files.values())
            _write_weights(tmp, meta, arch, planned, slices, dtype=dtype, progress=progress, output=out_dir,
                           reserve=beside)
            _write_files(tmp, meta, arch, tokenizer, source_name=gguf_path.name, dtype=dtype)
    if log is not None:
        for warning in tokenizer.warnings:
            log(f"warning: {warning}")
        log(f"wrote {out_dir}: {type(arch).hf_architecture()}, {len(planned)} tensors as {dtype}, "
            f"{len(vocab.tokens)} tokens in {time.perf_counter() - started:.1f} s")
    return out_dir


def _read_model(meta: GGUFMetadata, gguf_path: Path, dtype: str):
    """(the architecture's import object holding config.json, the vocabulary, the model name) from the metadata."""
    import gguf

    cls = gguf_architecture(meta.arch, str(gguf_path)).import_class(meta)
    config = cls.config_from_gguf(meta)
    vocab = read_vocab(meta)
    if len(vocab.tokens) != config["vocab_size"]:
        raise EdgeftError(f"{gguf_path}: {len(vocab.tokens)} tokens but token_embd.weight has "
                          f"{config['vocab_size']} rows; the GGUF is inconsistent")
    name = meta.get(gguf.Keys.General.NAME, None) or gguf_path.stem
    config.update({
        "bos_token_id": vocab.special_ids.get("bos"), "eos_token_id": vocab.special_ids.get("eos"),
        "pad_token_id": vocab.special_ids.get("pad"), "dtype": TORCH_DTYPES[dtype], "use_cache": True,
        # convert.metadata.model_name reads general.name back from here (a relative _name_or_path).
        "_name_or_path": name.replace("/", "-"),
    })
    return cls(config, gguf_path), vocab, name


def _plan_tensors(meta: GGUFMetadata, arch, gguf_path: Path) -> tuple[list[tuple[str, str]], dict]:
    """(gguf name, HF name) pairs and the slice index of each HF name (None unless from a stacked tensor); the
    tensors the converter generates go back to the config, and every tensor type is probed, before any write."""
    planned, extras, slices = [], {}, {}
    for tensor in meta.source.tensors:
        targets = arch.hf_tensors(tensor.name, meta.tensor_shape(tensor.name))
        if not targets:
            extras[tensor.name] = meta.read_tensor(tensor.name)
        for hf_name, index in targets:  # a stacked tensor (MoE experts) gives one HF tensor per slice
            planned.append((tensor.name, hf_name))
            slices[hf_name] = index
    if len({hf for _, hf in planned}) != len(planned):
        raise EdgeftError(f"{gguf_path}: two tensors map to the same HF name; the GGUF is damaged")
    arch.read_extra_tensors(extras)
    for qtype in {t.qtype for t in meta.source.tensors}:
        _probe(meta, next(t for t in meta.source.tensors if t.qtype == qtype))
    return planned, slices


def _producer(meta: GGUFMetadata, arch, slices: dict):
    """produce(gguf name, HF name) -> a job returning the HF tensor, read and put back into the HF layout."""
    stacked = {}  # the stacked tensor being sliced (gguf name -> array), read once for all its slices

    def produce(gguf_name: str, hf_name: str):
        def run():
            index = slices[hf_name]
            if index is None:
                values = meta.read_tensor(gguf_name)
            else:
                if gguf_name not in stacked:
                    stacked.clear()
                    stacked[gguf_name] = meta.read_tensor(gguf_name)
                values = stacked[gguf_name][index]
            try:
                return arch.untransform_tensor(hf_name, values)
            except ValueError as exc:
                raise EdgeftError(f"tensor {gguf_name}: shape {values.shape} does not fit the GGUF's "
                                  f"hyper-parameters ({exc}); the GGUF is inconsistent") from None
        return run

    return produce


def _write_weights(folder: Path, meta: GGUFMetadata, arch, planned, slices, *, dtype: str, progress: bool,
                   output: Path, reserve: int) -> None:
    from tqdm import tqdm

    gguf_names = {hf: g for g, hf in planned}
    produce = _producer(meta, arch, slices)
    with tqdm(total=len(planned), unit="tensor", desc="import", disable=not progress, leave=False) as bar:

        def written(hf_name: str) -> None:
            meta.source.release(meta.tensors[gguf_names[hf_name]])  # resident memory stays near one tensor
            bar.update(1)

        shapes = {hf: meta.tensor_shape(g)[slices[hf] is not None:] for g, hf in planned}
        write_safetensors(folder, [(hf, arch.hf_shape(hf, shapes[hf]), produce(g, hf)) for g, hf in planned],
                          dtype=dtype, on_written=written, output=output, reserve=reserve)


def _write_files(folder: Path, meta: GGUFMetadata, arch, tokenizer, *, source_name: str, dtype: str) -> None:
    """config.json, generation_config.json, the tokenizer files and README.md."""
    (folder / "config.json").write_text(json.dumps(arch.config, indent=2) + "\n")
    generation = {**_generation_config(tokenizer.special_ids), **_sampling_defaults(meta)}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    for file_name, content in tokenizer.files.items():
        path = folder / file_name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
    (folder / "README.md").write_text(model_card(meta, source_name=source_name, dtype=dtype), encoding="utf-8")


def _probe(meta: GGUFMetadata, tensor) -> None:
    """Dequantize the first row of a big tensor, so an unreadable type is refused before anything is written."""
    meta.read_rows(tensor.name, rows=1)
