"""Resume: SIGKILL after a checkpoint, then --resume, ends with the same adapter as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.factory import build_model
from tests.train_helpers import ROOT, edgeft_command, edgeft_env, run_edgeft, toy_data, write_recipe

torch = pytest.importorskip("torch")

STEPS = 8


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in rows]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    base = build_model("qwen2")
    train, evals = toy_data(tmp_path)
    # dropout > 0 so the RNG state must be restored too; 2 micro-batches per step exercise accumulation.
    recipe = write_recipe(tmp_path / "recipe.yaml", dropout=0.1, max_steps=STEPS, keep="last")
    args = ["train", "--base", str(base), "--data", str(train), "--eval", str(evals), "--config", str(recipe)]

    from edgeft.train import train as run_training

    # The uninterrupted reference runs in this process (same code, same thread count) to save a start-up.
    straight = run_training(base, train, tmp_path / "straight", eval_path=evals, config=recipe, progress=False)

    killed = tmp_path / "killed"
    process = subprocess.Popen(edgeft_command(*args, "-o", str(killed)), env=edgeft_env(), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = killed / "checkpoints" / "step-000002" / "state.json"
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "training finished before it could be killed"
    assert not (killed / "adapter_config.json").exists()  # nothing looks finished

    resumed = run_edgeft(*args, "-o", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    expected = load_file(str(straight / "adapter_model.safetensors"))
    got = load_file(str(killed / "adapter_model.safetensors"))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], rtol=0, atol=1e-5), key
    straight_rows, killed_rows = _losses(straight), _losses(killed)
    assert [r[0] for r in killed_rows] == [r[0] for r in straight_rows]
    for (_, a, ea), (_, b, eb) in zip(straight_rows, killed_rows):
        assert (a is None) == (b is None) and (a is None or abs(a - b) < 1e-5)
        assert (ea is None) == (eb is None) and (ea is None or abs(ea - eb) < 1e-5)
