"""Two CPU processes under torchrun (gloo): one adapter, and the same one a single process computes."""

from __future__ import annotations

import json

import pytest

from tests.factory import build_model
from tests.train_helpers import torchrun_train, toy_data, write_recipe

torch = pytest.importorskip("torch")


@pytest.mark.slow
def test_torchrun_two_processes_one_adapter(tmp_path):
    from safetensors.torch import load_file

    from edgeft.train import train as run_training

    base = build_model("qwen2")
    train, evals = toy_data(tmp_path)
    # dropout 0: the two runs then see the same arithmetic (2 micro-batches per step: 2 per process vs 1 x 2).
    recipe = write_recipe(tmp_path / "recipe.yaml", dropout=0.0, max_steps=3, save_every=100)
    out = tmp_path / "ddp"
    stdout, _ = torchrun_train("--base", base, "--data", train, "--eval", evals, "--config", recipe, "-o", out)
    assert stdout.count("trainable ") == 1  # only rank 0 reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    assert len([p for p in out.iterdir() if p.name == "adapter_model.safetensors"]) == 1
    assert not any(p.name.startswith(".") for p in out.iterdir())

    single = run_training(base, train, tmp_path / "single", eval_path=evals, config=recipe, progress=False)
    expected = load_file(str(single / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter_model.safetensors"))
    assert expected.keys() == got.keys()
    changed = False
    for key in expected:
        assert torch.allclose(expected[key], got[key], rtol=0, atol=1e-5), key
        changed |= "lora_B" in key and bool(expected[key].abs().max() > 0)
    assert changed  # the adapters trained (lora_B starts at zero)
