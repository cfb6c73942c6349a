"""edgeft imatrix: sums of squared linear inputs over the rendered conversations, in llama.cpp's imatrix GGUF
layout, accepted by our quantizer and changing imatrix-sensitive types."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType

from convert import convert_model
from convert.quant import kernels, load_imatrix
from convert.quant.gguf_io import quantize_gguf
from convert.quant.imatrix_file import ImatrixData, read_imatrix, write_imatrix
from convert.common.errors import EdgeftError
from tests import corpus
from tests.factory import build_model
from tests.hostile import invoke, one_line_error, tree_state
from tests.train_helpers import toy_data

needs_ggml = pytest.mark.skipif(not kernels.available(), reason="libggml-base (llama-cpp-python) not installed")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("imatrix") / "calib.jsonl"
    text = corpus.training_text(lines=24, seed=7)
    with path.open("w", encoding="utf-8") as handle:
        for question, answer in zip(text[0::2], text[1::2]):
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.fixture(scope="module")
def llama_imatrix(calibration, tmp_path_factory):
    from edgeft.imatrix import compute_imatrix

    model = build_model("llama", aligned=True)
    out = compute_imatrix(model, calibration, tmp_path_factory.mktemp("im") / "imatrix.gguf", threads=2)
    return model, out


def test_file_layout_is_llama_cpps(llama_imatrix, calibration):
    _, path = llama_imatrix
    reader = GGUFReader(path)
    fields = reader.fields
    assert fields["general.type"].contents() == "imatrix"
    assert fields["imatrix.datasets"].types == [GGUFValueType.ARRAY, GGUFValueType.STRING]
    assert fields["imatrix.datasets"].contents() == [str(calibration)]
    assert fields["imatrix.chunk_count"].types == [GGUFValueType.UINT32]
    assert fields["imatrix.chunk_count"].contents() == 12  # one chunk per conversation
    assert fields["imatrix.chunk_size"].types == [GGUFValueType.UINT32]
    names = [t.name for t in reader.tensors]
    # llama.cpp: weights in sorted order, each as its in_sum2 followed by its counts
    weight_order = [n[: -len(".in_sum2")] for n in names[0::2]]
    assert weight_order == sorted(weight_order)
    assert names[1::2] == [w + ".counts" for w in weight_order]
    weights = {n[: -len(".in_sum2")] for n in names if n.endswith(".in_sum2")}
    expected = {f"blk.{i}.{w}.weight" for i in range(2)
                for w in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert weights == expected  # block linears only; llama-imatrix leaves output.weight out by default
    for tensor in reader.tensors:
        assert tensor.tensor_type == T.F32
        width = 512 if ".ffn_down." in tensor.name else 256
        ggml_shape = [width, 1] if tensor.name.endswith(".in_sum2") else [1, 1]
        assert tensor.shape.tolist() == ggml_shape, tensor.name


def test_values_are_sums_of_squared_inputs(llama_imatrix, calibration):
    import torch
    from transformers import AutoModelForCausalLM

    from convert.common.jsonl import read_conversations
    from edgeft.data.masking import load_tokenizer
    from edgeft.data.templates import render_chat, special_tokens_of, template_for

    model_dir, path = llama_imatrix
    data = read_imatrix(path)
    # independent reference for layer 0's attention input: RMSNorm(embeddings), computed without hooks
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = load_tokenizer(model_dir)
    total, n_tokens = torch.zeros(256, dtype=torch.float64), 0
    for conversation in read_conversations(calibration):
        text = render_chat(template_for(model_dir), conversation["messages"], special_tokens=special_tokens_of(tokenizer))
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            x = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))[0].double()
        total += (x * x).sum(0)
        n_tokens += ids.shape[1]
    for part in ("attn_q", "attn_k", "attn_v"):  # q, k and v read the same normalized input
        np.testing.assert_allclose(data.sums[f"blk.0.{part}.weight"][0], total.numpy(), rtol=1e-5)
        assert data.counts[f"blk.0.{part}.weight"].tolist() == [n_tokens]
    importance = load_imatrix(path)["blk.0.attn_q.weight"]
    np.testing.assert_allclose(importance, (total / n_tokens).numpy(), rtol=1e-5)


def test_round_trip_and_zero_counts(tmp_path):
    data = ImatrixData(sums={"blk.0.ffn_up.weight": np.full((1, 32), 6.0, np.float32),
                             "blk.0.ffn_down.weight": np.full((1, 32), 6.0, np.float32)},
                       counts={"blk.0.ffn_up.weight": np.array([3.0], np.float32),
                               "blk.0.ffn_down.weight": np.array([0.0], np.float32)},
                       datasets=["a.jsonl"], chunk_count=1, chunk_size=3)
    importance = load_imatrix(write_imatrix(tmp_path / "m.gguf", data))
    assert importance["blk.0.ffn_up.weight"].tolist() == [2.0] * 32
    assert importance["blk.0.ffn_down.weight"].tolist() == [1.0] * 32  # llama-quantize: zero count -> 1


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(EdgeftError, match="not found"):
        load_imatrix(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(EdgeftError, match="not a GGUF imatrix"):
        load_imatrix(tmp_path / "junk.gguf")


@needs_ggml
@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q2_K"])
def test_imatrix_is_accepted_and_changes_sensitive_types(llama_imatrix, tmp_path, ftype):
    model_dir, path = llama_imatrix
    f32 = convert_model(model_dir, tmp_path / "f32.gguf", outtype="f32")
    plain = {t.name: t for t in GGUFReader(quantize_gguf(f32, tmp_path / "plain.gguf", ftype)).tensors}
    guided = {t.name: t for t in GGUFReader(quantize_gguf(f32, tmp_path / "im.gguf", ftype, imatrix=path)).tensors}
    changed = [name for name in plain if not np.array_equal(np.asarray(plain[name].data), np.asarray(guided[name].data))]
    assert changed and all(name.startswith("blk.") for name in changed)
    assert "blk.0.attn_q.weight" in changed and "blk.1.ffn_down.weight" in changed
    # one pass HF -> Qx with the imatrix gives the same bytes as the two-step route
    one = {t.name: t for t in GGUFReader(convert_model(model_dir, tmp_path / "one.gguf", outtype=ftype, imatrix=path)).tensors}
    for name, tensor in guided.items():
        assert np.array_equal(np.asarray(one[name].data), np.asarray(tensor.data)), name


def test_mismatched_imatrix_is_refused(tmp_path):
    f32 = convert_model(build_model("llama"), tmp_path / "f32.gguf", outtype="f32")  # hidden 64
    data = ImatrixData(sums={"blk.0.attn_q.weight": np.ones((1, 256), np.float32)},
                       counts={"blk.0.attn_q.weight": np.ones(1, np.float32)}, datasets=["x"], chunk_count=1,
                       chunk_size=1)
    with pytest.raises(EdgeftError, match="another model"):
        quantize_gguf(f32, tmp_path / "q.gguf", "Q8_0", imatrix=write_imatrix(tmp_path / "im.gguf", data))
    assert not (tmp_path / "q.gguf").exists()


def test_cli_imatrix(calibration, tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    out = tmp_path / "cli-imatrix.gguf"
    result = CliRunner().invoke(main, ["imatrix", str(build_model("qwen2")), "--data", str(calibration), "-o", str(out),
                                       "--max-examples", "3", "--threads", "2"])
    assert result.exit_code == 0, result.output
    data = read_imatrix(out)
    assert data.chunk_count == 3 and "blk.1.ffn_down.weight" in data.sums
    missing = CliRunner().invoke(main, ["imatrix", str(build_model("qwen2")), "--data", str(tmp_path / "nope.jsonl"),
                                        "-o", str(tmp_path / "x.gguf")])
    assert missing.exit_code == 1 and not (tmp_path / "x.gguf").exists()


def test_resolve_imatrix_auto_is_cached(calibration, tmp_path):
    from edgeft.imatrix import resolve_imatrix

    model = build_model("qwen2")
    assert resolve_imatrix(None, model) is None
    with pytest.raises(EdgeftError, match="needs calibration data"):
        resolve_imatrix("auto", model)
    with pytest.raises(EdgeftError, match="not found"):
        resolve_imatrix(tmp_path / "none.gguf", model)
    first = resolve_imatrix("auto", model, data_path=calibration, cache_dir=tmp_path, max_examples=2)
    mtime = first.stat().st_mtime_ns
    again = resolve_imatrix("AUTO", model, data_path=calibration, cache_dir=tmp_path, max_examples=2)
    assert again == first and again.stat().st_mtime_ns == mtime  # reused, not recomputed
    assert read_imatrix(first).chunk_count == 2


def test_cli_convert_with_imatrix_auto(calibration, tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    model = build_model("llama", aligned=True)
    out = tmp_path / "m-q4_k_m.gguf"
    result = CliRunner().invoke(main, ["convert", str(model), "-o", str(out), "--outtype", "q4_k_m",
                                       "--imatrix", "auto", "--imatrix-data", str(calibration), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert list((tmp_path / ".edgeft-imatrix").iterdir())
    without_data = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "x.gguf"),
                                             "--outtype", "q4_k_m", "--imatrix", "auto"])
    assert without_data.exit_code == 1
    assert "--imatrix-data" in without_data.output
    assert not (tmp_path / "x.gguf").exists()


@needs_ggml
def test_iquant_without_imatrix_is_one_line_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    model = build_model("llama", aligned=True)
    f32 = convert_model(model, tmp_path / "f32.gguf", outtype="f32")
    with pytest.raises(EdgeftError, match="--imatrix auto") as err:
        quantize_gguf(f32, tmp_path / "q.gguf", "IQ2_XS")
    assert "\n" not in str(err.value) and "--imatrix FILE" in str(err.value)
    with pytest.raises(EdgeftError, match="--imatrix auto"):
        convert_model(model, tmp_path / "one.gguf", outtype="iq1_s")
    for args in (["convert", str(model), "-o", str(tmp_path / "cli.gguf"), "--outtype", "IQ2_M"],
                 ["quantize", str(f32), "-o", str(tmp_path / "cli.gguf"), "--type", "Q2_K_S"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "--imatrix auto" in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f32.gguf"]


@needs_ggml
def test_imatrix_of_another_model_is_refused_by_both_routes(tmp_path):
    model = build_model("llama", aligned=True)  # 2 layers, rows 256 (ffn_down 512)
    f32 = convert_model(model, tmp_path / "f32.gguf", outtype="f32")

    def imatrix(name, entries):
        sums = {key: np.ones((1, width), np.float32) for key, width in entries.items()}
        return write_imatrix(tmp_path / name, ImatrixData(sums, {key: np.ones(1, np.float32) for key in sums},
                                                          ["x"], 1, 1))

    own = {f"blk.{i}.{w}.weight": (512 if w == "ffn_down" else 256) for i in range(2)
           for w in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    deeper = imatrix("deeper.gguf", {**own, "blk.2.attn_q.weight": 256})  # a layer this model lacks
    narrower = imatrix("narrower.gguf", {key: width // 4 for key, width in own.items()})  # the tiny fixture's widths
    for bad in (deeper, narrower):
        for run in (lambda: quantize_gguf(f32, tmp_path / "q.gguf", "IQ4_XS", imatrix=bad),
                    lambda: convert_model(model, tmp_path / "q.gguf", outtype="IQ2_XXS", imatrix=bad)):
            with pytest.raises(EdgeftError, match="another model") as err:
                run()
            assert "\n" not in str(err.value)
            assert not (tmp_path / "q.gguf").exists()
    # and the model's own shape is accepted
    assert quantize_gguf(f32, tmp_path / "q.gguf", "IQ2_XXS", imatrix=imatrix("own.gguf", own)).is_file()


# ---- hostile input -------------------------------------------------------------------------------------------------

@pytest.mark.hostile
@pytest.mark.parametrize("target", ["inside", "data"])
def test_imatrix_over_its_inputs_is_refused(tmp_path, target):
    pytest.importorskip("torch")
    model = tmp_path / "model"
    shutil.copytree(build_model("llama"), model)
    train, _ = toy_data(tmp_path / "data")
    out = model / "imatrix.gguf" if target == "inside" else train
    before = tree_state(model, train)
    one_line_error(invoke("imatrix", model, "--data", train, "-o", out), "write the output somewhere else")
    assert tree_state(model, train) == before
