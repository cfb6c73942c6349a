"""Shared bits of the training tests: a learnable toy chat task and small recipes (steps kept cheap for CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# A recipe small enough for a 2-core CI box: 4 short sequences per optimizer step, two micro-batches of 2.
TINY_RECIPE = {"effective_batch": 4, "micro_batch": 2, "max_len": 64, "lr": 1e-2, "r": 4, "warmup_ratio": 0.0,
               "eval_every": 2, "save_every": 2}


def toy_conversation(i: int) -> dict:
    # Constant answer: a tiny random model can learn it in a handful of steps, so "loss falls" is a real signal.
    return {"messages": [{"role": "user", "content": f"What colour is box number {i}?"},
                         {"role": "assistant", "content": "The box is blue."}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def toy_data(folder: Path, n_train: int = 16, n_eval: int = 4) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(folder / "train.jsonl", [toy_conversation(i) for i in range(n_train)])
    evals = write_jsonl(folder / "eval.jsonl", [toy_conversation(1000 + i) for i in range(n_eval)])
    return train, evals


def checked_adapter(out: Path, steps: int) -> tuple[dict, list[str]]:
    """The adapter_config.json and tensor names of a trained adapter, after checking that every LoRA A tensor was
    saved non-zero and that the `steps` logged losses are all finite."""
    from safetensors import safe_open

    config = json.loads((out / "adapter_config.json").read_text())
    with safe_open(str(out / "adapter_model.safetensors"), "np") as weights:
        names = list(weights.keys())
        assert all(float(abs(weights.get_tensor(n)).sum()) > 0 for n in names if "lora_A" in n)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == steps and all(loss == loss and loss < 100 for loss in losses)  # finite
    return config, names


def write_recipe(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump({**TINY_RECIPE, **settings}), encoding="utf-8")
    return path


def edgeft_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def edgeft_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeft", *args]


def run_edgeft(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(edgeft_command(*args), env=edgeft_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:  # torchrun's port 0 does not reach the workers' rendezvous
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_train(*args: str, processes: int = 2, timeout: float = 600) -> tuple[str, str]:
    """`torchrun --nproc_per_node PROCESSES -m edgeft train ARGS` on CPU (one thread each); (stdout, stderr) after
    asserting it succeeded."""
    import signal

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(_free_port()), "-m", "edgeft", "train", *map(str, args)]
    # Own process group: if anything hangs, the timeout takes torchrun's workers down with it.
    process = subprocess.Popen(command, env=edgeft_env(OMP_NUM_THREADS="1"), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
    return stdout, stderr
