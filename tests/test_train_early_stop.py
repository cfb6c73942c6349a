"""Overfit guard end to end: eval loss that stops improving ends the run early and the adapter is the best one."""

from __future__ import annotations

import json

import pytest

from tests.factory import build_model
from tests.train_helpers import TINY_RECIPE, toy_conversation, write_jsonl

torch = pytest.importorskip("torch")


def test_early_stop_keeps_the_best_adapter(tmp_path):
    from safetensors.torch import load_file

    from edgeft.train import train

    train_path = write_jsonl(tmp_path / "train.jsonl", [toy_conversation(i) for i in range(16)])
    # The held-out answers share nothing with the training answers: once the model has learnt the training
    # answer by heart, their loss stops falling and rises, which is what overfitting looks like from outside.
    contradicting = []
    for i in range(4):
        row = toy_conversation(500 + i)
        row["messages"][1]["content"] = "Seven green apples fell down quietly."
        contradicting.append(row)
    eval_path = write_jsonl(tmp_path / "eval.jsonl", contradicting)
    out = train(build_model("qwen2"), train_path, tmp_path / "out", eval_path=eval_path, progress=False,
                config=dict(TINY_RECIPE, eval_every=2, early_stop=3, max_steps=30))
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert summary["stopped_early"] and summary["steps"] < 30
    assert all(loss > min(evals) for loss in evals[-3:])  # three evals in a row without a new best
    assert summary["best_step"] < summary["steps"]
    assert summary["best_eval_loss"] == min(evals)
    assert summary["last_eval_loss"] == evals[-1] and summary["last_eval_step"] == summary["steps"]
    assert summary["adapter_step"] == summary["best_step"]  # keep: best, the default
    best = load_file(str(out / "checkpoints" / "best" / "trainable.safetensors"))
    adapter = load_file(str(out / "adapter_model.safetensors"))
    for key, tensor in adapter.items():
        match = [v for k, v in best.items() if k.replace(".default", "") == key]
        assert len(match) == 1 and torch.equal(match[0], tensor), key
