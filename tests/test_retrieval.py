"""runtime/retrieval.py and runtime/shots.py: retrieval against a brute-force BM25, the eval question's own
copies never retrieved, fixed shots that cover the data."""

from __future__ import annotations

import random

import pytest

from convert.common.errors import EdgeftError
from runtime.examples import Example
from runtime.retrieval import BM25Index, jaccard
from runtime.shots import RetrievedShots, Shot, choose_fixed, read_pool
from tests.ladder_helpers import _brute_force_bm25, _conversation, _reference_ranking, _training_rows, _write_jsonl


def test_bm25_ranking_matches_brute_force():
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(40)] + ["orders", "customers", "Oslo", "count"]
    documents = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 25))) for _ in range(120)]
    documents += [documents[3], ""]  # an exact tie and an empty document
    index = BM25Index(documents)
    for _ in range(25):
        query = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 6)))
        expected = _brute_force_bm25(documents, query)
        assert index.scores(query) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert index.ranked(query, k=len(documents)) == _reference_ranking(expected)


def _example(question: str, answer: str, line: int = 1) -> Example:
    return Example(line, [{"role": "system", "content": "Terse."}, {"role": "user", "content": question}], answer)


def test_retrieved_shots_are_the_brute_force_top_k_without_the_question_or_its_near_duplicates(tmp_path):
    rows = _training_rows()
    question = "How many buyers are there in Rome? Count every one of them, carefully, for the report."
    gold = "SELECT COUNT(*) FROM buyers WHERE city = 'Rome'"
    rows.insert(5, _conversation(question, gold))  # the eval example itself leaked into training
    rows.insert(17, _conversation(question.upper().replace(",", " ;"), gold))  # case and punctuation only
    rows.insert(30, _conversation(question.replace("carefully", "carefuly"), gold))  # a typo
    pool = read_pool(_write_jsonl(tmp_path / "train.jsonl", rows), shots=3)
    retriever = RetrievedShots(pool)
    example = _example(question, gold)

    reference = _reference_ranking(_brute_force_bm25([shot.user_text for shot in pool], question))
    copies = [i for i in reference if jaccard(pool[i].user_text, question) >= 0.8]
    assert {pool[i].line for i in copies} >= {6, 18, 31} and set(reference[:3]) <= set(copies)  # they rank first
    expected = [pool[i] for i in reference if i not in copies][:3]
    found = retriever.for_example(example, 3)
    assert found == expected[::-1]  # best last, right before the question
    assert all(jaccard(shot.user_text, question) < 0.8 for shot in found)
    assert RetrievedShots(read_pool(tmp_path / "train.jsonl", shots=3)).for_example(example, 3) == found  # same again


def test_fixed_shots_cover_the_kinds_and_are_deterministic(tmp_path):
    rows = _training_rows()
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    pool = read_pool(path, shots=3)
    chosen = choose_fixed(pool, 3)
    kinds = {shot.turns[-1]["content"].split(" FROM")[0] for shot in chosen}
    assert kinds == {"SELECT COUNT(*)", "SELECT *", "SELECT SUM(total)"}
    first_three = {shot.turns[-1]["content"].split(" FROM")[0] for shot in pool[:3]}
    assert first_three != kinds  # the first k would not have covered them
    assert choose_fixed(read_pool(path, shots=3), 3) == chosen
    # reversed file order: the kinds are covered all the same (only ties between equivalent examples follow the order)
    reversed_pool = read_pool(_write_jsonl(tmp_path / "reversed.jsonl", rows[::-1]), shots=3)
    assert {s.turns[-1]["content"].split(" FROM")[0] for s in choose_fixed(reversed_pool, 3)} == kinds


def test_fixed_shots_skip_near_duplicates_of_eval_questions(tmp_path):
    pool = read_pool(_write_jsonl(tmp_path / "train.jsonl", _training_rows()), shots=3)
    first = choose_fixed(pool, 1)[0]
    replacement = choose_fixed(pool, 1, avoid=[first.user_text + "!"])[0]
    assert replacement != first and jaccard(replacement.user_text, first.user_text) < 0.8


def test_shot_dataclass_text_joins_turns():
    shot = Shot(3, ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}), "q")
    assert shot.text == "q\na"
    with pytest.raises(EdgeftError, match="needs shots_from"):
        read_pool(None, shots=2)
