"""Decontamination: does the training set contain what the model will be evaluated on?

What the model is evaluated on is each eval example's user turns and its gold answer (the last assistant turn).
They are compared, normalised, with every user and assistant turn of the training set:

- exact match of a whole turn (at least `MIN_EXACT_WORDS` words: "yes" or "42" in both sets is not a leak);
- long n-gram overlap (13 words, the GPT-3 / Llama decontamination length) for long texts: a training example that
  holds at least 80% of an eval text's 13-grams has that text in it, reworded at the edges or not; for an eval user
  turn, `MIN_SHARED_NGRAMS` of them (a 20-word verbatim span) are enough: it may be wrapped in another instruction.

Text shared by two or more eval examples is the task's boilerplate (an instruction, a label, a system prompt
pasted into the user turn), not an item of the test: it is left out on the eval side, so a prompt every example
shares is never called contamination. Likewise a gold answer or a 13-gram found in more than `MAX_TRAIN_COPIES`
training examples is the dataset's stock phrasing ("Thanks for telling us. First, ..."), not a copied eval item; an
eval *user turn* found verbatim in training is a leak however often it appears. System messages are not compared.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

NGRAM_WORDS = 13
MIN_EXACT_WORDS = 4
MIN_NGRAM_SHARE = 0.8
MIN_SHARED_NGRAMS = 8  # 8 consecutive 13-grams = a 20-word verbatim span: a copied item, whatever surrounds it
MAX_TRAIN_COPIES = 5  # a phrase in more training examples than this is the dataset's house style, not one leaked item


@dataclass(frozen=True)
class Contamination:
    train_index: int
    eval_index: int
    what: str  # "user turn" or "gold answer"
    how: str  # "exact match" or "13-gram overlap 9/9"


@dataclass(frozen=True)
class EvalText:
    eval_index: int
    what: str
    text: str  # normalised


def eval_texts(eval_messages: Sequence[Sequence[dict]], normalize) -> list[EvalText]:
    """The texts a model is scored on: every user turn, and the gold answer (last assistant turn)."""
    texts = []
    for index, messages in enumerate(eval_messages):
        for message in messages:
            if message["role"] == "user":
                texts.append(EvalText(index, "user turn", normalize(message["content"])))
        answers = [m for m in messages if m["role"] == "assistant"]
        if answers:
            texts.append(EvalText(index, "gold answer", normalize(answers[-1]["content"])))
    return texts


def _ngram_hashes(word_hashes: np.ndarray, turn_lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(turn index, hash) of every n-word window that lies inside one turn."""
    total = len(word_hashes)
    if total < n:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    windows = total - n + 1
    combined = np.zeros(windows, dtype=np.uint64)
    for j in range(n):
        combined = combined * np.uint64(1_000_003) + word_hashes[j : j + windows]
    turn_of_word = np.repeat(np.arange(len(turn_lengths)), turn_lengths)
    inside = turn_of_word[:windows] == turn_of_word[n - 1 :]
    return turn_of_word[:windows][inside], combined[inside]


def _word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    # str.split and hash run in C: millions of words per second, no Python loop per word.
    lengths = np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))
    words = " ".join(texts).split()
    hashes = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
    return hashes, lengths


def find_contamination(
    train_turns: Sequence[Sequence[str]], evals: Sequence[EvalText], n: int = NGRAM_WORDS
) -> list[Contamination]:
    """Training examples (by index) that contain an eval example's user turn or gold answer.

    `train_turns[i]` holds the normalised user and assistant turns of training example i.
    """
    owners: dict[str, set[int]] = defaultdict(set)
    for item in evals:
        owners[item.text].add(item.eval_index)
    # Exact: whole-turn matches of distinctive eval texts.
    exact = {
        item.text: item
        for item in evals
        if len(owners[item.text]) == 1 and len(item.text.split()) >= MIN_EXACT_WORDS
    }
    train_copies: dict[str, int] = defaultdict(int)
    for turns in train_turns:
        for turn in set(turns):
            if turn in exact:
                train_copies[turn] += 1
    found: dict[tuple[int, int], Contamination] = {}
    for train_index, turns in enumerate(train_turns):
        for turn in turns:
            item = exact.get(turn)
            if item is None or (item.what == "gold answer" and train_copies[turn] > MAX_TRAIN_COPIES):
                continue
            if (train_index, item.eval_index) not in found:
                found[(train_index, item.eval_index)] = Contamination(train_index, item.eval_index, item.what, "exact match")
    found_overlap = _ngram_overlap(train_turns, evals, n)
    for key, value in found_overlap.items():
        found.setdefault(key, value)
    return sorted(found.values(), key=lambda c: (c.train_index, c.eval_index))


def _ngram_overlap(train_turns, evals: Sequence[EvalText], n: int) -> dict[tuple[int, int], Contamination]:
    long_evals = [item for item in evals if len(item.text.split()) >= n]
    if not long_evals:
        return {}
    eval_words, eval_lengths = _word_hashes([item.text for item in long_evals])
    eval_turn, eval_grams = _ngram_hashes(eval_words, eval_lengths, n)
    # Boilerplate n-grams (in two or more eval examples) say nothing about any one item.
    gram_owner_example = np.array([long_evals[t].eval_index for t in eval_turn], dtype=np.int64)
    pairs = np.unique(np.stack([eval_grams, gram_owner_example.astype(np.uint64)], axis=1), axis=0)
    grams, counts = np.unique(pairs[:, 0], return_counts=True)
    distinctive = grams[counts == 1]
    keep = np.isin(eval_grams, distinctive)
    eval_turn, eval_grams = eval_turn[keep], eval_grams[keep]
    # Deduplicate (text, gram) and count each eval text's distinctive grams.
    unique_pairs = np.unique(np.stack([eval_grams, eval_turn.astype(np.uint64)], axis=1), axis=0)
    gram_sorted, text_of_gram = unique_pairs[:, 0], unique_pairs[:, 1].astype(np.int64)
    grams_per_text = np.bincount(text_of_gram, minlength=len(long_evals))
    if len(gram_sorted) == 0:
        return {}

    flat_turns, example_of_turn = [], []
    for train_index, turns in enumerate(train_turns):
        flat_turns.extend(turns)
        example_of_turn.extend([train_index] * len(turns))
    if not flat_turns:
        return {}
    train_words, train_lengths = _word_hashes(flat_turns)
    train_turn, train_grams = _ngram_hashes(train_words, train_lengths, n)
    hit = np.isin(train_grams, gram_sorted)
    if not hit.any():
        return {}
    hit_examples = np.asarray(example_of_turn, dtype=np.int64)[train_turn[hit]]
    hit_texts = text_of_gram[np.searchsorted(gram_sorted, train_grams[hit])]
    # Count distinct shared grams per (train example, eval text), leaving out the grams common in training.
    triples = np.unique(np.stack([hit_examples, hit_texts, train_grams[hit].view(np.int64)], axis=1), axis=0)
    example_gram = np.unique(triples[:, [0, 2]], axis=0)
    grams, copies = np.unique(example_gram[:, 1], return_counts=True)
    triples = triples[~np.isin(triples[:, 2], grams[copies > MAX_TRAIN_COPIES])]
    pair_keys, shared = np.unique(triples[:, :2], axis=0, return_counts=True)
    found = {}
    for (train_index, text_index), count in zip(pair_keys.tolist(), shared.tolist()):
        total = int(grams_per_text[text_index])
        item = long_evals[text_index]
        # A long verbatim span is enough for an eval input (it may sit inside another instruction); an answer
        # must be mostly there, since stock phrasing ("First, please send a photo of the ...") recurs in answers.
        embedded = item.what == "user turn" and count >= MIN_SHARED_NGRAMS
        if total and (count / total >= MIN_NGRAM_SHARE or embedded):
            key = (train_index, item.eval_index)
            if key not in found:
                found[key] = Contamination(train_index, item.eval_index, item.what, f"{n}-gram overlap {count}/{total}")
    return found
