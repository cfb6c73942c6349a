"""What the prompted rungs put in front of a question: solved training examples (fixed or retrieved) and passages.

- Fixed k-shot: k training conversations chosen once, to stand in for the whole training set: greedy facility
  location (each pick adds the most "how well the best pick so far stands in for each training example", the
  similarity being BM25 of one conversation's text against another's, scaled by its score against itself). The first
  pick is the medoid of the largest group of similar conversations, the next ones cover other groups (question
  kinds); unlike "the first k", the file's order only breaks ties (to the earlier line), so it is deterministic.
- Retrieved k-shot: per eval question, the k training conversations whose user turns score highest under BM25
  against its user turns, never the question itself or a near-duplicate of it.
- Retrieved context: the passages of a user corpus (JSONL of {"text": ...}) that score highest against the question.

Example:
    pool = read_pool("train.jsonl")
    fixed = choose_fixed(pool, 3, avoid=[e.question for e in examples])
    shots = RetrievedShots(pool).for_example(example, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from convert.common.jsonl import read_json_lines
from convert.common.errors import EdgeftError
from runtime.examples import Example, read_conversations
from runtime.eval_settings import SettingError
from runtime.retrieval import BM25Index, is_near_duplicate

COVERAGE_TARGETS = 1000  # training conversations the fixed choice must stand in for (evenly spaced sample)


@dataclass(frozen=True)
class Shot:
    line: int  # line in the training file, for review and report
    turns: tuple  # user/assistant turns (system dropped: the rung's own system prompt leads)
    user_text: str  # the user turns joined: what retrieval matches against

    @property
    def text(self) -> str:
        return "\n".join(m["content"] for m in self.turns)


def user_text(messages: Sequence[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def read_pool(path: str | Path | None, *, shots: int = 1) -> list[Shot]:
    """The solved training conversations (a user turn and an assistant turn at least) of `path`."""
    if path is None:
        raise SettingError(f"<shots> {shots} needs <shots_from> TRAIN.jsonl to draw the examples from", "shots",
                           "shots_from")
    pool = []
    for number, messages in read_conversations(path, setting="shots_from"):
        turns = tuple(m for m in messages if m["role"] != "system")
        roles = {m["role"] for m in turns}
        if {"user", "assistant"} <= roles:
            pool.append(Shot(number, turns, user_text(turns)))
    if len(pool) < shots:
        raise SettingError(f"<shots_from> {path}: only {len(pool)} solved conversations for <shots> {shots}; "
                           "lower <shots> or pass a larger training file", "shots_from", "shots")
    return pool


def shot_messages(shots: Sequence[Shot]) -> list[dict]:
    return [dict(m) for shot in shots for m in shot.turns]


def _targets(n: int, limit: int = COVERAGE_TARGETS) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(np.int64))


def _stand_in_matrix(pool: Sequence[Shot], targets: np.ndarray) -> np.ndarray:
    """(targets, pool) similarity in [0, 1]: BM25 of each pool conversation for the target's text, over the
    target's score against itself."""
    index = BM25Index([shot.text for shot in pool])
    rows = np.zeros((len(targets), len(pool)))
    for row, target in enumerate(targets):
        scores = index.scores(pool[target].text)
        self_score = scores[target]
        if self_score > 0:
            rows[row] = np.minimum(scores / self_score, 1.0)
    return rows


def choose_fixed(pool: Sequence[Shot], k: int, *, avoid: Sequence[str] = ()) -> list[Shot]:
    """k conversations that together stand in best for the pool; none a near-duplicate of a text in `avoid`
    (the eval questions: a fixed shot must not hand the model an eval answer)."""
    if k <= 0:
        return []
    similarity = _stand_in_matrix(pool, _targets(len(pool)))
    covered = np.zeros(similarity.shape[0])
    banned = np.zeros(len(pool), dtype=bool)
    chosen: list[int] = []
    while len(chosen) < k and not banned.all():
        gains = np.maximum(similarity, covered[:, None]).sum(axis=0)
        gains[banned] = -np.inf
        pick = int(np.argmax(gains))  # first maximum: the earlier line wins a tie
        banned[pick] = True
        if any(is_near_duplicate(pool[pick].user_text, question) for question in avoid):
            continue
        chosen.append(pick)
        covered = np.maximum(covered, similarity[:, pick])
    if len(chosen) < k:
        raise SettingError(f"<shots> {k}: only {len(chosen)} training conversations are not near-duplicates of an "
                           "eval question; lower <shots> or decontaminate the training file (edgeft data check)",
                           "shots")
    return [pool[i] for i in chosen]


class RetrievedShots:
    """BM25 over the pool's user turns; `for_example` skips the example's own copies and near-duplicates."""

    def __init__(self, pool: Sequence[Shot]):
        self.pool = list(pool)
        self.index = BM25Index([shot.user_text for shot in self.pool])

    def for_example(self, example: Example, k: int) -> list[Shot]:
        """The k best matches, best LAST: the most similar solved example sits right before the question."""
        question = user_text(example.prompt)
        answer = example.gold

        def is_copy(index: int) -> bool:
            shot = self.pool[index]
            return is_near_duplicate(shot.user_text, question) or is_near_duplicate(shot.text, f"{question}\n{answer}")

        found = self.index.ranked(question, k, skip=is_copy)
        if len(found) < k:
            raise SettingError(f"<shots> {k}: eval line {example.line} has only {len(found)} training conversations "
                               "that are not near-duplicates of it; lower <shots>", "shots")
        return [self.pool[i] for i in reversed(found)]


@dataclass(frozen=True)
class Passage:
    line: int
    text: str


def read_context(path: str | Path) -> list[Passage]:
    """The context corpus (setting `context`): one {"text": "..."} per line (other keys ignored)."""
    path = Path(path)
    if not path.is_file():
        what = "not a regular file" if path.exists() else "file not found"
        raise SettingError(f"<context> {path}: {what}; pass a JSONL file of {{\"text\": ...}} passages", "context")
    passages = []
    for number, record in read_json_lines(path, advice="; one {\"text\": ...} per line"):
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise EdgeftError(f"{path}:{number}: expected {{\"text\": \"a non-empty passage\"}}")
        passages.append(Passage(number, text.strip()))
    if not passages:
        raise SettingError(f"<context> {path}: the corpus is empty; add passages or drop <context>", "context")
    return passages


class RetrievedContext:
    def __init__(self, passages: Sequence[Passage]):
        self.passages = list(passages)
        self.index = BM25Index([p.text for p in self.passages])

    def for_example(self, example: Example, k: int) -> list[Passage]:
        """The k best passages, best first."""
        return [self.passages[i] for i in self.index.ranked(user_text(example.prompt), min(k, len(self.passages)))]
