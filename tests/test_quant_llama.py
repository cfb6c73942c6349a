"""llama.cpp (through llama-cpp-python) loads and runs every quantized output; F16 vs quantized top-1 agreement on
a fixed prompt is reported, and Q8_0 must agree on >= 99% of positions on a model with decisive predictions.

Why a "decisive" variant: the factory's random fixtures have nearly flat next-token distributions (the residual
stream is dominated by random layer outputs), so their top-1 is a near-tie at many positions — even F32 vs F16
flips some, and Q8_0 lands near 90%. Trained models are decisive on most tokens. The variant gives the fixture that
property the cheap way: unit-variance token embeddings (the residual stream carries the token's identity, as early
layers of trained LMs do) and an output head with a fixed "next token" component (a random bigram table).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from convert import convert_model
from convert.quant import FILE_TYPES
from convert.quant.gguf_io import quantize_gguf
from tests.factory import build_model

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")

PROMPT = 4 * (
    "The model reads a table, selects the column with the largest value, and answers the question in one short "
    "sentence. Training data, evaluation data and the learning rate were chosen first; then the weight matrix of "
    "each layer was quantized and converted, and the assistant answered the user again. "
)


def decisive_variant(model_dir, out_dir):
    from safetensors.numpy import load_file, save_file

    shutil.copytree(model_dir, out_dir)
    path = next(out_dir.glob("*.safetensors"))
    weights = load_file(path)
    embed = weights["model.embed_tokens.weight"]
    bigram = embed[np.random.default_rng(0).permutation(embed.shape[0])]
    bigram = bigram / np.linalg.norm(bigram, axis=1, keepdims=True) * 0.5 * np.sqrt(embed.shape[1])
    weights["lm_head.weight"] = (weights["lm_head.weight"] + bigram).astype(embed.dtype)
    weights["model.embed_tokens.weight"] = (embed / embed.std() * 1.25).astype(embed.dtype)
    save_file(weights, path, metadata={"format": "pt"})
    return out_dir


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    work = tmp_path_factory.mktemp("quant-llama")
    sources = {"aligned": build_model("llama", aligned=True), "odd": build_model("llama")}
    sources["decisive"] = decisive_variant(sources["aligned"], work / "decisive-hf")
    out = {}
    for kind, model_dir in sources.items():
        f32 = convert_model(model_dir, work / f"{kind}-f32.gguf", outtype="f32")
        # the whole menu on the decisive fixture (256-aligned, so the i-quant tensors really are i-quants), with an
        # imatrix where llama.cpp requires one; the original menu on the others
        names = list(FILE_TYPES) if kind == "decisive" else ORIGINAL
        imatrix = uniform_imatrix(f32, work / f"{kind}-imatrix.gguf")
        out[kind] = {}
        for name in names:
            needs = name in NEEDS_IMATRIX
            out[kind][name] = quantize_gguf(f32, work / f"{kind}-{name}.gguf", name, threads=2,
                                            imatrix=imatrix if needs else None)
    return out


ORIGINAL = ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K"]
NEEDS_IMATRIX = ("IQ3_XS", "IQ3_XXS", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")


def uniform_imatrix(f32, path):
    """All-ones importances: llama.cpp's "no preference" weighting, enough to let the i-quants run."""
    from gguf import GGUFReader

    from convert.quant.imatrix_file import ImatrixData, write_imatrix

    names = [t.name for t in GGUFReader(f32).tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    widths = {t.name: int(t.shape[0]) for t in GGUFReader(f32).tensors}
    return write_imatrix(path, ImatrixData({n: np.ones((1, widths[n]), np.float32) for n in names},
                                           {n: np.ones(1, np.float32) for n in names}, ["uniform"], 1, 1))


def top1(path, tokens) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(tokens)
        return np.asarray(llm.scores[: len(tokens)]).argmax(axis=1)
    finally:
        llm.close()


def agreement_table(files) -> tuple[dict[str, float], int]:
    vocab = llama_cpp.Llama(model_path=str(files["F16"]), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(PROMPT.encode(), add_bos=True)
    vocab.close()
    reference = top1(files["F16"], tokens)
    # every output loads and runs: each tensor type is one llama.cpp can compute with
    table = {name: 100.0 * float(np.mean(top1(path, tokens) == reference)) for name, path in files.items()}
    return table, len(tokens)


@pytest.mark.parametrize("kind", ["decisive", "aligned", "odd"])
def test_every_type_loads_and_agrees_with_f16(quantized, kind):
    table, n = agreement_table(quantized[kind])
    print(f"\ntop-1 agreement vs F16 ({kind} fixture, {n} positions): "
          + ", ".join(f"{name} {value:.1f}%" for name, value in table.items()))
    assert n > 300
    if kind == "decisive":
        assert table["Q8_0"] >= 99.0
        # more bits, more agreement: a broken kernel or layout would fall out of this order
        assert table["F32"] >= table["Q8_0"] >= table["Q4_K_M"] >= table["Q2_K"] > 50.0
        # every type of the menu, down to 1.56 bits/weight, predicts far above chance: its kernel and layout work
        assert min(table.values()) > 50.0, table
    else:  # flat random fixtures: report, and only check the outputs are far from noise
        assert table["F32"] >= 98.0 and table["Q8_0"] >= 80.0 and table["Q4_K_M"] >= 30.0
