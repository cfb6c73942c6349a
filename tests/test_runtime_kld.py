"""Quantization quality is measured in the right order: KLD(Q4_K_M) > KLD(Q8_0) > 0 against the F16 reference."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from convert import convert_model  # noqa: E402
from runtime.kld import compare  # noqa: E402
from runtime.perplexity import default_probe_text  # noqa: E402
from tests.factory import build_model  # noqa: E402


def test_kld_orders_quant_types(tmp_path):
    model_dir = build_model("llama", aligned=True)  # hidden 256: K-quant blocks apply
    reference = convert_model(model_dir, tmp_path / "f16.gguf", outtype="f16")
    q8 = convert_model(model_dir, tmp_path / "q8_0.gguf", outtype="q8_0")
    q4 = convert_model(model_dir, tmp_path / "q4_k_m.gguf", outtype="q4_k_m")
    text = default_probe_text()
    texts = [text[i:i + 800] for i in range(0, 2400, 800)]
    kld_q8 = compare(q8, reference, texts, n_ctx=512, threads=1)
    kld_q4 = compare(q4, reference, texts, n_ctx=512, threads=1)
    assert kld_q4["kld_mean"] > kld_q8["kld_mean"] > 0
    assert kld_q4["n_tokens"] == kld_q8["n_tokens"] > 100
    assert kld_q8["top1_agreement"] >= kld_q4["top1_agreement"]
    assert kld_q4["kld_p99"] >= kld_q4["kld_median"]
