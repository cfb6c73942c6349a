"""Two CPU processes under torchrun (gloo): one adapter, and the same one a single process computes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.factory import build_model
from tests.train_helpers import ROOT, edgeft_env, toy_data, write_recipe

torch = pytest.importorskip("torch")


def _free_port() -> int:
    with socket.socket() as probe:  # torchrun's port 0 does not reach the workers' rendezvous
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_one_adapter(tmp_path):
    from safetensors.torch import load_file

    from edgeft.train import train as run_training

    base = build_model("qwen2")
    train, evals = toy_data(tmp_path)
    # dropout 0: the two runs then see the same arithmetic (2 micro-batches per step: 2 per process vs 1 x 2).
    recipe = write_recipe(tmp_path / "recipe.yaml", dropout=0.0, max_steps=3, save_every=100)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
               "-m", "edgeft", "train", "--base", str(base), "--data", str(train), "--eval", str(evals),
               "--config", str(recipe), "-o", str(out)]
    # Own process group: if anything hangs, the timeout takes torchrun's workers down with it.
    process = subprocess.Popen(command, env=edgeft_env(OMP_NUM_THREADS="1"), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
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
