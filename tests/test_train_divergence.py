"""A run whose loss stops being a number stops at that step in one line, keeps the checkpoints saved before it and
writes no adapter (it exited 0 with an adapter of NaNs); no checkpoint of non-finite weights is ever saved; and a
damaged checkpoint on --resume falls back to the one before it, saying so."""

from __future__ import annotations

import json

import pytest

from convert.common.errors import EdgeftError
from edgeft.train import checkpoint as ckpt
from tests.factory import build_model
from tests.hostile import error_line, invoke
from tests.train_helpers import toy_data, write_recipe

torch = pytest.importorskip("torch")


@pytest.fixture
def run_inputs(tmp_path):
    data, evals = toy_data(tmp_path / "data")
    recipe = write_recipe(tmp_path / "recipe.yaml", method="lora", save_every=1, max_steps=4, eval_every=100)
    return {"base": build_model("qwen2"), "data": data, "recipe": recipe, "out": tmp_path / "run"}


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(run_inputs, monkeypatch):
    import edgeft.train.loop as loop

    real_loss, real_accumulate, steps = loop.token_loss_sum, loop.TrainRun.accumulate, {"n": 0}

    def counting(self, mine):  # however the step's micro-batches are packed into forwards
        steps["n"] += 1
        return real_accumulate(self, mine)

    def poisoned_from_step_3(model, batch, *rest):
        loss = real_loss(model, batch, *rest)
        return loss * float("nan") if steps["n"] >= 3 else loss

    monkeypatch.setattr(loop.TrainRun, "accumulate", counting)
    monkeypatch.setattr(loop, "token_loss_sum", poisoned_from_step_3)
    out = run_inputs["out"]
    error_line(invoke("train", "--base", run_inputs["base"], "--data", run_inputs["data"], "--config",
                      run_inputs["recipe"], "-o", out),
               "training diverged at step 3: the loss is nan", "checkpoint (step-000002) is kept", "lower lr")
    assert [path.name for _, path in ckpt.list_checkpoints(out)] == ["step-000001", "step-000002"]
    from safetensors.torch import load_file

    weights = load_file(str(out / "checkpoints" / "step-000002" / "trainable.safetensors"))
    assert weights and all(bool(torch.isfinite(t).all()) for t in weights.values())
    assert not (out / "adapter_config.json").exists() and not (out / "summary.json").exists()
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in losses] == [1, 2]  # the NaN step is not logged as a result


def test_a_checkpoint_of_non_finite_weights_is_never_written(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(EdgeftError, match="diverged at step 7: weight weight is NaN or Inf"):
        ckpt.save_checkpoint(tmp_path, 7, model=model, optimizer=optimizer, scheduler=scheduler, rng_states=[],
                             state={}, keep=2)
    with pytest.raises(EdgeftError, match="diverged at step 7: weight weight"):
        ckpt.save_best(tmp_path, model=model, state={"step": 7})
    assert not any((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "optimizer.pt", "state.json"])
def test_resume_from_a_truncated_checkpoint_falls_back_to_the_one_before(run_inputs, damaged):
    from edgeft.train import train

    out = run_inputs["out"]
    train(run_inputs["base"], run_inputs["data"], out, config=run_inputs["recipe"], progress=False)
    latest = ckpt.latest_checkpoint(out)
    assert latest.name == "step-000003"
    cut = latest / damaged
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])  # a copy or a full disk cut it short
    with pytest.warns(UserWarning, match=r"checkpoint step-000003 \(.*\) cannot be read; resuming from step-000002"):
        train(run_inputs["base"], run_inputs["data"], out, config=run_inputs["recipe"], resume=True, max_steps=5,
              progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]  # step 3 trained again from step 2, once in the log


def test_resume_with_every_checkpoint_damaged_is_one_line(run_inputs):
    from edgeft.train import train

    out = run_inputs["out"]
    train(run_inputs["base"], run_inputs["data"], out, config=run_inputs["recipe"], progress=False)
    for _, path in ckpt.list_checkpoints(out):
        (path / "trainable.safetensors").write_bytes(b"\0" * 10)
    error_line(invoke("train", "--base", run_inputs["base"], "--data", run_inputs["data"], "-o", out,
                      "--resume", "--max-steps", "5"),
               "no checkpoint can be read (step-000003", "start again with --overwrite")


def test_a_truncated_weights_file_is_one_line_not_a_traceback(tmp_path):
    """What any checkpoint read (the best one when a run ends, a step one on --resume) says of a cut file."""
    model = torch.nn.Linear(2, 2)
    ckpt.save_best(tmp_path, model=model, state={"step": 1})
    weights = tmp_path / "checkpoints" / "best" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(ckpt.DamagedCheckpoint) as info:
        ckpt.load_trainable_state(model, weights)
    assert str(info.value).startswith(f"{weights}: cannot be read (") and "\n" not in str(info.value)
    assert "the checkpoint is damaged" in str(info.value) and isinstance(info.value, EdgeftError)
