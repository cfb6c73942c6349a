"""Checkpoint selection by the task's metric, and the greedy answers it scores (checked against llama.cpp)."""

from __future__ import annotations

import json

import pytest

from tests.factory import build_model
from tests.train_helpers import TINY_RECIPE, toy_conversation, toy_data, write_jsonl

torch = pytest.importorskip("torch")


def _run_with_scripted_answers(tmp_path, monkeypatch, right_at: set[int], **settings):
    """A real tiny run (the loss falls all along) whose validation answers are right only at the evals numbered
    in `right_at` (1-based): the metric peaks mid-run while the loss keeps falling."""
    import edgeft.train.greedy as greedy
    from edgeft.train import train

    calls = []

    def scripted(model, tok, prompts, **kwargs):
        calls.append(len(calls) + 1)
        return ["The box is blue." if calls[-1] in right_at else "The box is red." for _ in prompts]

    monkeypatch.setattr(greedy, "greedy_answers", scripted)
    train_path, _ = toy_data(tmp_path / "data", n_train=16)
    validation = write_jsonl(tmp_path / "data" / "validation.jsonl", [toy_conversation(500 + i) for i in range(4)])
    out = train(build_model("qwen2"), train_path, tmp_path / "out", progress=False,
                config=dict(TINY_RECIPE, method="lora", validation=str(validation), select="metric", metric="exact",
                            **{"eval_every": 2, "max_steps": 8, "early_stop": None, **settings}))
    return out, json.loads((out / "summary.json").read_text())


def test_selection_keeps_the_metric_peak_while_the_loss_keeps_falling(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    out, summary = _run_with_scripted_answers(tmp_path, monkeypatch, right_at={2})
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4, 6, 8]
    assert [row["score"] for row in rows] == [0.0, 1.0, 0.0, 0.0]
    losses = {row["step"]: row["loss"] for row in rows}
    assert min(losses, key=losses.get) == 8  # selection by the loss would keep the last checkpoint
    assert summary["best_step"] == summary["adapter_step"] == 4 and summary["best_val_score"] == 1.0
    assert summary["best_eval_loss"] == losses[4] and summary["select"] == "metric"
    from edgeft.train import format_summary

    assert "best score    100.0% exact on 4 validation examples at step 4 (the adapter's weights; review.md, " \
           "validation.png)" in format_summary(summary)
    best = load_file(str(out / "checkpoints" / "best" / "trainable.safetensors"))
    adapter = load_file(str(out / "adapter_model.safetensors"))
    for key, tensor in adapter.items():
        [match] = [v for k, v in best.items() if k.replace(".default", "") == key]
        assert torch.equal(match, tensor), key
    assert json.loads((out / "checkpoints" / "best" / "state.json").read_text())["step"] == 4
    review = (out / "review.md").read_text()
    assert "| 4 (chosen) | 100.0% |" in review and review.count("- step 6 ✗ `The box is red.`") == 4
    assert (out / "validation.png").read_bytes()[:4] == b"\x89PNG"
    # Never trained on: the run trained on the whole --data (a validation file) and scored only the file.
    assert (out / "validation.jsonl").read_text() == (tmp_path / "data" / "validation.jsonl").read_text()


def test_a_tie_keeps_the_earlier_checkpoint_and_early_stop_counts_the_metric(tmp_path, monkeypatch):
    out, summary = _run_with_scripted_answers(tmp_path / "tie", monkeypatch, right_at={1, 2, 3, 4})
    assert summary["best_step"] == 2  # equal scores: fewer steps is the cheaper checkpoint
    out, summary = _run_with_scripted_answers(tmp_path / "stop", monkeypatch, right_at={2}, max_steps=20,
                                              early_stop=2)
    assert summary["stopped_early"] and summary["steps"] == 8 and summary["best_step"] == 4


def test_greedy_answers_are_llama_cpp_answers_of_the_merged_gguf(tmp_path):
    """transformers' batched greedy decoding of the in-training model gives the answers llama.cpp gives for the
    merged checkpoint's GGUF: scoring checkpoints without converting them measures what would ship."""
    from convert import convert_model
    from edgeft.merge import merge_adapter
    from edgeft.train import train
    from edgeft.train.greedy import greedy_answers
    from edgeft.train.model import load_tokenizer, load_training_model
    from edgeft.train.recipe import resolve_recipe
    from runtime.generate import chat_reply
    from runtime.load import open_gguf

    base = build_model("qwen2")
    train_path, _ = toy_data(tmp_path / "data", n_train=16)
    recipe = dict(TINY_RECIPE, method="lora", max_steps=16, lr=3e-2, save_every=100)
    adapter = train(base, train_path, tmp_path / "adapter", progress=False, config=recipe)
    gguf = convert_model(merge_adapter(base, adapter, tmp_path / "merged", nf4_report=False), tmp_path / "m.gguf",
                         outtype="f32")
    resolved = resolve_recipe(recipe)
    tok = load_tokenizer(base, resolved)
    model = load_training_model(base, resolved, tok)
    from edgeft.train.checkpoint import load_trainable_state

    load_trainable_state(model, _trainable_from_adapter(adapter, model, tmp_path))
    prompts = [toy_conversation(700 + i)["messages"][:1] for i in range(5)]
    prompts.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which box is blue?"}])
    ours = greedy_answers(model, tok, prompts, max_new_tokens=12, batch_size=4)
    llm = open_gguf(gguf, n_ctx=256)
    theirs = [chat_reply(llm, messages, max_tokens=12, path=str(gguf)).text for messages in prompts]
    llm.close()
    assert ours == theirs
    assert ours[0] == "The box is blue."  # and the trained answer, so the comparison is not of noise


def _trainable_from_adapter(adapter, model, tmp_path):
    """The adapter's LoRA tensors under the training model's parameter names (peft adds `.default`)."""
    from safetensors.torch import load_file, save_file

    saved = load_file(str(adapter / "adapter_model.safetensors"))
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    tensors = {name: saved[name.replace(".default", "")] for name in names}
    path = tmp_path / "trainable.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.slow
def test_two_processes_select_as_one_does(tmp_path):
    """Under torchrun rank 0 decodes and every rank keeps the score it broadcasts: the same checkpoints scored, the
    same one kept, as a single process."""
    from edgeft.train import train as run_training
    from tests.train_helpers import torchrun_train, write_recipe

    base = build_model("qwen2")
    train_path, _ = toy_data(tmp_path / "data", n_train=16)
    validation = write_jsonl(tmp_path / "data" / "val.jsonl", [toy_conversation(500 + i) for i in range(4)])
    recipe = write_recipe(tmp_path / "recipe.yaml", method="lora", dropout=0.0, max_steps=6, eval_every=2,
                          save_every=100, lr=3e-2, validation=str(validation), select="metric", metric="exact",
                          early_stop=None)
    out = tmp_path / "ddp"
    torchrun_train("--base", base, "--data", train_path, "--config", recipe, "-o", out)
    single = run_training(base, train_path, tmp_path / "single", config=recipe, progress=False)

    def selection(folder):
        return [{k: row[k] for k in ("step", "answers", "scores")}
                for row in map(json.loads, (folder / "selection.jsonl").read_text().splitlines())]

    assert selection(out) == selection(single) and len(selection(out)) == 3
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (out, single)]
    assert summaries[0]["best_step"] == summaries[1]["best_step"]
    assert summaries[0]["best_val_score"] == summaries[1]["best_val_score"]
