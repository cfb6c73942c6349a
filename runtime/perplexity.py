"""Forgetting probe: perplexity on general text, and multiple-choice accuracy by log-likelihood.

A fine-tune that got better at its task but much worse at plain English has quietly broken something; the
ratio ppl(fine-tune) / ppl(base) on the same text catches it. Text is cut into non-overlapping windows of the
context size, each starting with BOS like llama-perplexity does, and every token after the first is scored.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from convert.common.jsonl import read_json_lines
from convert.common.errors import EdgeftError
from runtime.eval_settings import SettingError


def default_probe_text() -> str:
    """The general-English text that ships with edgeft (runtime/data/general.txt)."""
    return resources.files("runtime").joinpath("data/general.txt").read_text(encoding="utf-8")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float32)
    peak = logits.max(axis=-1, keepdims=True)
    shifted = logits - peak
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def sequence_logits(llm, tokens: Sequence[int]) -> np.ndarray:
    """Logits at every position of `tokens` (row i predicts token i+1). The model must be opened with
    logits_all=True; the returned array is a copy, safe across later evals."""
    if len(tokens) > llm.n_ctx():
        raise ValueError(f"{len(tokens)} tokens exceed the context of {llm.n_ctx()}")
    llm.reset()
    llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def token_logprobs(llm, tokens: Sequence[int]) -> np.ndarray:
    """log p(token[i] | tokens[:i]) for i = 1..n-1."""
    logprobs = log_softmax(sequence_logits(llm, tokens)[:-1])
    return logprobs[np.arange(len(tokens) - 1), np.asarray(tokens[1:])]


def text_windows(llm, text: str, window: int) -> list[list[int]]:
    """Tokenize once, then cut into windows of `window` tokens that each begin with BOS (when the model has one)."""
    bos = llm.token_bos()
    body = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    step = window - 1 if bos >= 0 else window
    windows = []
    for start in range(0, len(body), step):
        piece = body[start:start + step]
        if len(piece) < 2:
            continue
        windows.append(([bos] if bos >= 0 else []) + piece)
    return windows


def perplexity(llm, text: str, *, window: int | None = None, max_tokens: int | None = None) -> dict:
    """Perplexity of `text` under `llm` (opened with logits_all=True)."""
    window = min(window or llm.n_ctx(), llm.n_ctx())
    total_nll, count = 0.0, 0
    for tokens in text_windows(llm, text, window):
        logprobs = token_logprobs(llm, tokens)
        total_nll -= float(logprobs.sum(dtype=np.float64))
        count += logprobs.size
        if max_tokens and count >= max_tokens:
            break
    if count == 0:
        raise SettingError("<probe> text is too short to measure perplexity; pass a longer file", "probe")
    return {"ppl": math.exp(total_nll / count), "nll": total_nll / count, "n_tokens": count}


def read_probe(path: str | Path | None) -> tuple[str, str]:
    """(name, text) of the probe: the shipped general text, or the user's file."""
    if path is None:
        return "general.txt (built in)", default_probe_text()
    path = Path(path)
    if not path.is_file():  # a pipe blocked the eval for good, /dev/zero filled the memory
        what = "not a regular file" if path.exists() else "file not found"
        raise SettingError(f"<probe> {path}: {what}; pass a plain-text file", "probe")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingError(f"<probe> {path}: cannot read it as UTF-8 text ({exc}); pass a plain-text file",
                           "probe") from exc
    return str(path), text


def read_choices(path: str | Path) -> list[dict]:
    """Multiple-choice JSONL: {"question": str, "choices": [str, ...], "answer": index}."""
    path = Path(path)
    if not path.is_file():
        raise SettingError(f"<choices> {path}: {'not a regular file' if path.exists() else 'file not found'}",
                           "choices")
    items = []
    for number, item in read_json_lines(path):
        item = item if isinstance(item, dict) else {}  # a list or a number: the shape message below
        choices, answer = item.get("choices"), item.get("answer")
        if not isinstance(item.get("question"), str) or not isinstance(choices, list) or len(choices) < 2 \
                or not all(isinstance(c, str) for c in choices) or not isinstance(answer, int) \
                or not 0 <= answer < len(choices):
            raise EdgeftError(f"{path}:{number}: expected {{\"question\": str, \"choices\": [str, str, ...], "
                              "\"answer\": index into choices}")
        items.append(item)
    if not items:
        raise EdgeftError(f"{path}: no questions")
    return items


def _continuation_logprob(llm, context: list[int], full: list[int]) -> float:
    # Tokenizers may merge across the context/choice boundary; score from the first differing token.
    shared = 0
    while shared < min(len(context), len(full)) and context[shared] == full[shared]:
        shared += 1
    shared = max(shared, 1)
    logprobs = token_logprobs(llm, full)
    return float(logprobs[shared - 1:].sum(dtype=np.float64))


def multiple_choice(llm, items: Iterable[dict]) -> dict:
    """Accuracy picking the choice of highest log-likelihood, raw and per character (lm-eval's acc/acc_norm)."""
    bos = llm.token_bos()
    prefix = [bos] if bos >= 0 else []
    correct = correct_norm = total = 0
    for item in items:
        context = prefix + llm.tokenize(item["question"].encode("utf-8"), add_bos=False, special=False)
        scores, normed = [], []
        for choice in item["choices"]:
            full = prefix + llm.tokenize(f"{item['question']} {choice}".encode("utf-8"), add_bos=False,
                                         special=False)
            score = _continuation_logprob(llm, context, full)
            scores.append(score)
            normed.append(score / max(1, len(choice)))
        correct += int(np.argmax(scores) == item["answer"])
        correct_norm += int(np.argmax(normed) == item["answer"])
        total += 1
    return {"accuracy": correct / total, "accuracy_norm": correct_norm / total, "n": total}
