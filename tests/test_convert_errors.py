"""Bad input: one clear line, a non-zero exit, and no output (or temporary) file left behind."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from tests.convert_helpers import assert_refused
from tests.factory import build_model


def _copy(arch: str, tmp_path, **kw):
    target = tmp_path / "model"
    shutil.copytree(build_model(arch, **kw), target)
    return target


def _run(*args):
    return CliRunner().invoke(main, ["convert", *map(str, args)])




@pytest.fixture
def out_dir(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


def test_missing_config(tmp_path, out_dir):
    model = _copy("qwen2", tmp_path)
    (model / "config.json").unlink()
    assert_refused(_run(model, "-o", out_dir / "m.gguf"), out_dir, "config.json is missing")


def test_unknown_architecture(tmp_path, out_dir):
    model = _copy("qwen2", tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["FalconMambaForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    assert_refused(_run(model, "-o", out_dir / "m.gguf"), out_dir, "FalconMambaForCausalLM", "LlamaForCausalLM",
                    "Gemma2ForCausalLM")


def test_missing_shard(tmp_path, out_dir):
    model = _copy("llama", tmp_path, shards=3)
    (model / "model-00002-of-00003.safetensors").unlink()
    assert_refused(_run(model, "-o", out_dir / "m.gguf"), out_dir, "model-00002-of-00003.safetensors", "missing")


def test_truncated_safetensors(tmp_path, out_dir):
    model = _copy("llama", tmp_path)
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    assert_refused(_run(model, "-o", out_dir / "m.gguf"), out_dir, "truncated")


def test_missing_tokenizer(tmp_path, out_dir):
    model = _copy("mistral", tmp_path)
    for name in ("tokenizer.json", "tokenizer.model"):
        (model / name).unlink()
    assert_refused(_run(model, "-o", out_dir / "m.gguf"), out_dir, "no tokenizer")


def test_unrecognised_pretokenizer_and_override(tmp_path, out_dir):
    model = _copy("llama", tmp_path)
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    split = tokenizer["pre_tokenizer"]["pretokenizers"][0]
    split["pattern"]["Regex"] = split["pattern"]["Regex"].replace(r"\p{N}{1,3}", r"\p{N}{1,4}")
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert_refused(_run(model, "-o", out_dir / "m.gguf"), out_dir, "pre-tokenizer not recognised", "--pretokenizer")

    result = _run(model, "-o", out_dir / "m.gguf", "--outtype", "f32", "--pretokenizer", "llama-bpe")
    assert result.exit_code == 0, result.output
    assert [p.name for p in out_dir.iterdir()] == ["m.gguf"]


def test_pickle_weights_refused_unless_allowed(tmp_path, out_dir):
    import torch
    from safetensors.torch import load_file

    model = _copy("qwen2", tmp_path)
    state = load_file(model / "model.safetensors")
    torch.save(state, model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    assert_refused(_run(model, "-o", out_dir / "m.gguf"), out_dir, "pickle", "--allow-pickle")

    result = _run(model, "-o", out_dir / "m.gguf", "--outtype", "f32", "--allow-pickle")
    assert result.exit_code == 0, result.output
    import gguf
    import numpy as np

    tensors = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out_dir / "m.gguf").tensors}
    np.testing.assert_array_equal(tensors["blk.0.attn_q.bias"], state["model.layers.0.self_attn.q_proj.bias"].numpy())


def test_output_folder_not_creatable(tmp_path, out_dir):
    model = build_model("qwen2")
    blocker = out_dir / "not-a-folder"
    blocker.write_text("x")
    result = _run(model, "-o", blocker / "m.gguf")
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert "cannot create output folder" in result.output or "not writable" in result.output
    assert [p.name for p in out_dir.iterdir()] == ["not-a-folder"]


def test_output_folder_not_writable(out_dir, monkeypatch):
    model = build_model("qwen2")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root writes anywhere: make the permission check say no
        import convert.common.fsutil

        real_access = os.access
        monkeypatch.setattr(convert.common.fsutil.os, "access",
                            lambda path, mode, **kw: False if str(path) == str(out_dir) else real_access(path, mode, **kw))
    out_dir.chmod(0o500)
    try:
        assert_refused(_run(model, "-o", out_dir / "m.gguf"), out_dir, "not writable")
    finally:
        out_dir.chmod(0o700)


def test_interrupted_write_leaves_nothing(tmp_path, out_dir, monkeypatch):
    """A failure mid-stream (here: a NaN in a tensor) removes the temporary file."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    model = _copy("qwen2", tmp_path)
    state = load_file(model / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    state[name] = state[name].copy()
    state[name][3, 5] = np.nan
    save_file(state, model / "model.safetensors")
    assert_refused(_run(model, "-o", out_dir / "m.gguf"), out_dir, name, "NaN")


def test_qwen3_attention_bias_refused_in_one_line(tmp_path, out_dir):
    """HF Qwen3's attention_bias adds an o_proj bias llama.cpp's qwen3 graph never loads: refused before any tensor is
    planned (the o_proj.bias tensor is in the checkpoint), naming the reason."""
    model = build_model("qwen3", attention_bias=True)
    assert_refused(_run(model, "-o", out_dir / "m.gguf"), out_dir, "attention_bias=true", "o_proj bias",
                   "llama.cpp's qwen3 graph")


def test_qwen3_gguf_with_attention_biases_is_not_imported(tmp_path):
    """The way back holds to the same rule: a qwen3 GGUF with q/k/v biases has no HF Qwen3 form edgeft writes."""
    from convert.arch.qwen3 import Qwen3
    from convert.common.errors import EdgeftError

    with pytest.raises(EdgeftError, match="blk.0.attn_q.bias: not part of a Qwen3ForCausalLM"):
        Qwen3({}, tmp_path / "m.gguf").hf_tensor_name("blk.0.attn_q.bias")
