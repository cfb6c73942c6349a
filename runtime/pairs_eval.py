"""Preference accuracy through the shipped file: for each held-out pair, log p(chosen) and log p(rejected) under
the GGUF in llama.cpp, over the answer's tokens only (the answer and its end-of-turn marker, what SFT and DPO
train), rendered with the GGUF's own chat template. A pair counts as preferred when log p(chosen) > log p(rejected);
the margin is their difference. The fine-tune and the base are scored on the same pairs at the same quant, each
with a 95% bootstrap interval, and the gain (fine-tune - base, paired) is what `gates: min_pref_gain` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from convert.common.pairs import read_pairs, split_pair


def read_eval_pairs(path: str | Path) -> list[tuple[list, list, list]]:
    """(prompt, chosen, rejected) message lists of a pairs JSONL; the first bad line raises `FILE:LINE: what`."""
    return [split_pair(record.data) for record in read_pairs(path)]


def answer_span(llm, prompt: Sequence[dict], answer: Sequence[dict], *, path: str) -> tuple[list[int], int]:
    """(tokens of the conversation through the answer's end-of-turn marker, index of the answer's first token).

    The answer runs from the end of the prompt rendered with its generation prompt to the last visible character
    of the assistant turn: the newline a template writes after its end-of-turn marker is the template's, not the
    model's (the rule edgeft.data.masking applies to training). Tokens that merge across the boundary are scored
    with the answer, from the first token where the two tokenizations differ."""
    from runtime.generate import prompt_tokens, render_chat

    before = render_chat(llm, list(prompt), path=path)
    full = render_chat(llm, list(prompt) + list(answer), add_generation_prompt=False, path=path)
    through = full[:len(full.rstrip())] if full.startswith(before) else full
    context, tokens = prompt_tokens(llm, before), prompt_tokens(llm, through)
    shared = 0
    while shared < min(len(context), len(tokens)) and context[shared] == tokens[shared]:
        shared += 1
    return tokens, max(shared, 1)


def answer_logprob(llm, prompt: Sequence[dict], answer: Sequence[dict], *, path: str) -> float:
    """log p(answer | prompt) summed over the answer's tokens (the model opened with logits_all=True)."""
    from runtime.perplexity import token_logprobs

    tokens, start = answer_span(llm, prompt, answer, path=path)
    return float(token_logprobs(llm, tokens)[start - 1:].sum(dtype=np.float64))


def score_pairs(gguf: str | Path, pairs: list[tuple[list, list, list]], *, n_ctx: int = 2048,
                threads: int | None = None) -> dict:
    """Per-pair margins log p(chosen) - log p(rejected) under one GGUF, and its accuracy and mean margin with
    95% intervals."""
    from runtime.load import open_gguf
    from runtime.stats import mean_interval

    llm = open_gguf(gguf, n_ctx=n_ctx, logits_all=True, threads=threads)
    try:
        margins = [answer_logprob(llm, prompt, chosen, path=str(gguf)) -
                   answer_logprob(llm, prompt, rejected, path=str(gguf)) for prompt, chosen, rejected in pairs]
    finally:
        llm.close()
    return {"margins": margins, "accuracy": mean_interval([float(m > 0) for m in margins]),
            "margin": mean_interval(margins)}


def preference_section(model: str | Path, baseline: str | Path | None, pairs_path: str | Path, *,
                       pairs: list | None = None, n_ctx: int = 2048, threads: int | None = None) -> dict:
    """The report's `preference` section: each model's accuracy and mean margin and, with a baseline, the
    paired gain in accuracy (fine-tune - base). `pairs`: those of `pairs_path`, when already read."""
    from runtime.stats import paired_difference

    pairs = read_eval_pairs(pairs_path) if pairs is None else pairs
    section = {"pairs": str(pairs_path), "n": len(pairs), "model": score_pairs(model, pairs, n_ctx=n_ctx,
                                                                              threads=threads)}
    if baseline is not None:
        section["baseline"] = score_pairs(baseline, pairs, n_ctx=n_ctx, threads=threads)
        section["gain"] = paired_difference([float(m > 0) for m in section["model"]["margins"]],
                                            [float(m > 0) for m in section["baseline"]["margins"]])
    return section
