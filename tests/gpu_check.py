"""GPU check (`make gpu-check`): QLoRA on CUDA through `edgeft train` on a small generated model.

Runs a few dozen optimizer steps (NF4 + double quant, bf16 compute), prints tokens/s, peak GPU memory and the loss
curve, and fails unless the loss decreases. Needs a CUDA machine; it is not part of `make test`.

    python tests/gpu_check.py                 # on a CUDA machine
    python tests/gpu_check.py --cpu-dry-run   # exercise this script's code on CPU (3 steps, no GPU figures)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = "red green blue small large round square box ball cup the a is of and with".split()


def _data(path: Path, n: int) -> Path:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        colour = rng.choice(["red", "green", "blue"])
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
        rows.append({"messages": [{"role": "user", "content": f"Item {i}: {filler}. What colour is the {colour} box?"},
                                  {"role": "assistant", "content": f"The box is {colour}."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cpu-dry-run", action="store_true", help="run 3 steps on CPU to test the script itself")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("gpu-check: no CUDA device visible to torch; run this on a CUDA machine (or --cpu-dry-run)")
        return 2
    from edgeft.train import format_summary, train
    from tests.factory import build_model

    steps = 3 if args.cpu_dry_run else args.steps
    # Wider and deeper than the unit-test fixtures so the GPU does real work: hidden 1024, 8 layers.
    base = build_model("llama", aligned=True, **({} if args.cpu_dry_run else {
        "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
        "num_key_value_heads": 4}))
    with tempfile.TemporaryDirectory(prefix="edgeft-gpu-check-") as work:
        work = Path(work)
        data = _data(work / "train.jsonl", 64 * 8)
        started = time.perf_counter()
        out = train(base, data, work / "out", method="qlora", max_steps=steps, lr=1e-3, progress=True,
                    config={"effective_batch": 32, "micro_batch": 8, "max_len": 512, "save_every": 10_000})
        wall = time.perf_counter() - started
        summary = json.loads((out / "summary.json").read_text())
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    print()
    print(f"device        {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu (dry run)'}")
    for line in format_summary(summary):
        print(line)
    if torch.cuda.is_available():
        print(f"peak GPU mem  {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (torch allocator)")
    print(f"wall          {wall:.1f} s including model load")
    print("loss curve    " + " ".join(f"{loss:.3f}" for loss in losses))
    head, tail = sum(losses[:3]) / len(losses[:3]), sum(losses[-3:]) / len(losses[-3:])
    if args.cpu_dry_run:
        print("gpu-check: dry run finished (no loss assertion over 3 steps)")
        return 0
    assert tail < 0.8 * head, f"loss did not decrease: first steps {head:.3f}, last steps {tail:.3f}"
    print(f"gpu-check: OK (loss {head:.3f} -> {tail:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
