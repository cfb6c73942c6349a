"""Quantization quality: KL-divergence, top-1 agreement and Δperplexity of a model against a reference GGUF.

This is what `llama-perplexity --kl-divergence` reports: for every scored position, KL(P_ref || P_model) over the
whole vocabulary, whether both pick the same most likely token, and the perplexities of the actual next tokens.
As llama-perplexity does with its `--kl-divergence-base` file, the reference's log-probabilities are computed
first and kept on disk (a float32 memmap: float16 would add errors larger than a good Q8_0's whole KLD), so the
two models never have to fit in memory together.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from convert.common.errors import EdgeftError
from runtime.load import open_gguf
from runtime.perplexity import log_softmax, sequence_logits


def _tokenize_all(llm, texts: Sequence[str], n_ctx: int, max_tokens: int) -> list[list[int]]:
    from runtime.generate import prompt_tokens

    sequences, budget = [], max_tokens
    for text in texts:
        tokens = prompt_tokens(llm, text)[:n_ctx]
        if len(tokens) < 2 or budget <= 0:
            continue
        tokens = tokens[: budget + 1]
        sequences.append(tokens)
        budget -= len(tokens) - 1
    if not sequences:
        raise EdgeftError("KL-divergence: no text with at least two tokens to score")
    return sequences


def compare(model: str | os.PathLike, reference: str | os.PathLike, texts: Sequence[str], *, n_ctx: int = 2048,
            max_tokens: int = 16384, threads: int | None = None, work_dir: str | os.PathLike | None = None) -> dict:
    """Mean/median/p99/max KLD, top-1 agreement (%), and perplexities of `model` vs `reference` on `texts`
    (chat-rendered prompts or plain text; special tokens are parsed). Both GGUFs must share one vocabulary."""
    reference_llm = open_gguf(reference, n_ctx=n_ctx, logits_all=True, threads=threads)
    n_vocab = reference_llm.n_vocab()
    sequences = _tokenize_all(reference_llm, texts, n_ctx, max_tokens)
    n_positions = sum(len(tokens) - 1 for tokens in sequences)
    with tempfile.TemporaryDirectory(prefix="edgeft-kld-", dir=work_dir) as scratch:
        base = np.lib.format.open_memmap(Path(scratch) / "reference-logprobs.npy", mode="w+", dtype=np.float32,
                                         shape=(n_positions, n_vocab))
        reference_nll, row = 0.0, 0
        for tokens in sequences:
            logprobs = log_softmax(sequence_logits(reference_llm, tokens)[:-1])
            base[row:row + len(logprobs)] = logprobs
            reference_nll -= float(logprobs[np.arange(len(logprobs)), tokens[1:]].sum(dtype=np.float64))
            row += len(logprobs)
        reference_llm.close()
        del reference_llm

        model_llm = open_gguf(model, n_ctx=n_ctx, logits_all=True, threads=threads)
        if model_llm.n_vocab() != n_vocab:
            raise EdgeftError(f"{model}: vocabulary of {model_llm.n_vocab()} tokens differs from the reference's "
                              f"{n_vocab}; KL-divergence needs the same tokenizer")
        kld = np.empty(n_positions, dtype=np.float64)
        same_top = np.empty(n_positions, dtype=bool)
        model_nll, row = 0.0, 0
        for tokens in sequences:
            logprobs = log_softmax(sequence_logits(model_llm, tokens)[:-1])
            reference_rows = np.asarray(base[row:row + len(logprobs)])
            kld[row:row + len(logprobs)] = (np.exp(reference_rows) * (reference_rows - logprobs)).sum(
                axis=-1, dtype=np.float64)
            same_top[row:row + len(logprobs)] = reference_rows.argmax(-1) == logprobs.argmax(-1)
            model_nll -= float(logprobs[np.arange(len(logprobs)), tokens[1:]].sum(dtype=np.float64))
            row += len(logprobs)
        model_llm.close()
        del base
    # Rounding can leave a tiny negative sum where the two distributions are equal; KL is never below 0.
    kld = np.maximum(kld, 0.0)
    ppl_model = math.exp(model_nll / n_positions)
    ppl_reference = math.exp(reference_nll / n_positions)
    return {
        "model": str(model), "reference": str(reference), "n_tokens": int(n_positions), "n_texts": len(sequences),
        "kld_mean": float(kld.mean()), "kld_median": float(np.median(kld)),
        "kld_p99": float(np.percentile(kld, 99)), "kld_max": float(kld.max()),
        "top1_agreement": float(same_top.mean() * 100.0),
        "ppl_model": ppl_model, "ppl_reference": ppl_reference, "delta_ppl": ppl_model - ppl_reference,
    }
