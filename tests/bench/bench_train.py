"""Training throughput: edgeft's loop vs a plain transformers + peft loop, measured side by side in one run.

Each side trains in a process of its own (so each has its own peak memory), and the sides take turns one optimizer
step at a time, so a machine that slows down slows both. Model loading is excluded, and so is each side's first
step (allocator and kernel warm-up).

- The demo's case (the target): LoRA r=16 on every linear of SmolLM2-135M-Instruct, the demo's conversations, the
  demo recipe (effective batch 16, micro-batch 8, max_len 128, dropout 0, lr 1e-3). The plain loop is what a user
  writes from the transformers/peft docs: a shuffled DataLoader, batches padded to their longest member, fp32,
  `model(**batch, labels=labels)` (full-vocabulary logits at every position, labels -100 outside the assistant
  turn). edgeft runs its recipe as `edgeft train` would (packing, logits at the labelled positions, precision auto),
  and again with bf16 off when auto picked bf16, so the gain on a CPU without bf16 is known too, and with shared
  prefixes off (the demo's conversations share a system prompt; other data may not). Target: >= 2x.
- Same learning: edgeft's first CURVE_STEPS losses against edgeft's own loop with packing off in fp32 (padded
  micro-batches: the loop before packing), same seed and data order: mean absolute relative difference <= 2%.
- QLoRA on the random fixture llama (NF4 + double quant, gradient checkpointing), chats of very different lengths.

Throughput = the conversations' tokens (padding not counted) per second of optimizer steps, on both sides; the
ratio per CPU-second of each side's process is printed too (steadier on a shared machine).
Steps: EDGEFT_BENCH_TRAIN_STEPS (default 6) steps per side, the first untimed; EDGEFT_BENCH_TRAIN_CURVE (default 40)
for the curve; EDGEFT_BENCH_TRAIN_THREADS (default: torch's) threads per side.
"""

from __future__ import annotations

import json
import os
import random
import resource
import time
from pathlib import Path

STEPS = max(2, int(os.environ.get("EDGEFT_BENCH_TRAIN_STEPS", "6")))
CURVE_STEPS = int(os.environ.get("EDGEFT_BENCH_TRAIN_CURVE", "40"))
# Torch threads per side (0: torch's default). 1 keeps a crowded machine's thread waits out of the comparison.
THREADS = int(os.environ.get("EDGEFT_BENCH_TRAIN_THREADS", "0"))
DEMO_RECIPE = Path(__file__).resolve().parents[2] / "edgeft" / "demo" / "recipe.yaml"
QLORA_SETTINGS = {"r": 16, "micro_batch": 4, "effective_batch": 16, "max_len": 512, "lr": 1e-4, "dropout": 0.05,
                  "warmup_ratio": 0.1, "seed": 0, "save_every": 1000}
WORDS = ("the model answers short questions about boxes colours numbers and shapes with care while "
         "training on small data sets that vary in length from a few words to long paragraphs").split()


def _chat_data(path: Path, n: int = 96) -> Path:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        # Real chat data varies a lot in length; padding waste is part of what is measured.
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 160)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 60)))
        rows.append({"messages": [{"role": "user", "content": f"{i}: {question}?"},
                                  {"role": "assistant", "content": answer}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _demo_settings() -> dict:
    import yaml

    train = yaml.safe_load(DEMO_RECIPE.read_text(encoding="utf-8"))["train"]
    return {**train, "save_every": 10_000, "eval_every": 10_000, "max_steps": max(STEPS, CURVE_STEPS) + 1}


def _plain_stepper(base: Path, data: Path, settings: dict):
    """What a user writes from the transformers/peft docs: DataLoader, model(..., labels=...), loss.backward()."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from convert.common.jsonl import read_conversations
    from edgeft.data.masking import build_example

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    examples = [build_example(c["messages"], tokenizer, max_len=settings["max_len"]) for c in read_conversations(data)]
    lora = LoraConfig(r=settings["r"], lora_alpha=2 * settings["r"], lora_dropout=settings["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    if settings.get("method") == "lora":
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), lora)
    else:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(str(base), quantization_config=quant, device_map="cpu",
                                                     dtype=torch.float32)
        model = get_peft_model(prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}), lora)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collate(batch):
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    loader = torch.utils.data.DataLoader(examples, batch_size=settings["micro_batch"], shuffle=True,
                                         collate_fn=collate, generator=torch.Generator().manual_seed(0))
    accum = settings["effective_batch"] // settings["micro_batch"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings["lr"])
    model.train()
    batches = iter(())

    def step() -> tuple[int, float]:
        nonlocal batches
        tokens, loss_sum = 0, 0.0
        for _ in range(accum):
            batch = next(batches, None)
            if batch is None:
                batches = iter(loader)
                batch = next(batches)
            loss = model(**batch).loss / accum
            loss.backward()
            tokens += int(batch["attention_mask"].sum())
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return tokens, loss_sum

    return step


def _edgeft_stepper(base: Path, data: Path, settings: dict, out_dir: Path):
    """edgeft's own loop (TrainRun), built as `edgeft train` builds it, stepped one optimizer step at a time."""
    from edgeft.train import _seed_everything
    from edgeft.train.batches import tokenize_conversations
    from edgeft.train.loop import TrainRun
    from edgeft.train.model import load_tokenizer, load_training_model
    from edgeft.train.precision import resolve_precision
    from edgeft.train.recipe import resolve_recipe
    from edgeft.train.world import World

    recipe = resolve_recipe(dict(settings))
    precision = resolve_precision(recipe.precision)
    _seed_everything(recipe.seed)
    tok = load_tokenizer(base, recipe)
    examples = tokenize_conversations(data, tok.tokenizer, tok.chat_template, recipe.max_len)
    model = load_training_model(base, recipe, tok, precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = TrainRun(model, recipe, World(), tok, examples, [], out_dir, progress=False, precision=precision)
    _seed_everything(recipe.seed)
    done = 0

    def step() -> tuple[int, float]:
        nonlocal done
        before = run.state["tokens"]
        loss = run.step(done)
        done += 1
        return run.state["tokens"] - before, loss

    step.precision = precision.compute
    return step


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(conn, side: str, base: str, data: str, settings: dict, out_dir: str) -> None:
    """One side in its own process: 'step' -> (tokens, seconds, CPU seconds, loss); 'stop' -> its peak RSS in MiB."""
    if THREADS:
        import torch

        torch.set_num_threads(THREADS)
    if side == "plain":
        step = _plain_stepper(Path(base), Path(data), settings)
    else:
        step = _edgeft_stepper(Path(base), Path(data), settings, Path(out_dir))
    conn.send(getattr(step, "precision", "fp32"))
    while conn.recv() == "step":
        started, cpu = time.perf_counter(), _cpu_seconds()
        tokens, loss = step()
        conn.send((tokens, time.perf_counter() - started, _cpu_seconds() - cpu, loss))
    conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _interleaved(sides: dict[str, tuple[str, dict]], base: Path, data: Path, work: Path,
                 steps: dict[str, int]) -> dict[str, dict]:
    """Run every side for its number of steps, one step each in turn; tokens/s leaves out each side's first step."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    procs, results = {}, {}
    for name, (side, settings) in sides.items():
        parent, child = context.Pipe()
        proc = context.Process(target=_worker, args=(child, side, str(base), str(data), settings, str(work / name)))
        proc.start()
        procs[name] = (proc, parent)
    for name, (_, conn) in procs.items():
        results[name] = {"precision": conn.recv(), "steps": []}
    for index in range(max(steps.values())):
        for name, (_, conn) in procs.items():
            if index < steps[name]:
                conn.send("step")
                results[name]["steps"].append(conn.recv())
    for name, (proc, conn) in procs.items():
        conn.send("stop")
        results[name]["peak_mb"] = conn.recv()
        proc.join()
        timed = results[name]["steps"][1:STEPS]
        tokens = sum(step[0] for step in timed)
        results[name]["tokens_per_s"] = tokens / sum(step[1] for step in timed)
        results[name]["tokens_per_cpu_s"] = tokens / sum(step[2] for step in timed)
        results[name]["losses"] = [step[3] for step in results[name]["steps"]]
    return results


def mean_relative_difference(curve: list[float], reference: list[float]) -> float:
    return sum(abs(a - b) / abs(b) for a, b in zip(curve, reference)) / len(reference)


def _rows(case: str, results: dict, target: float | None) -> list[dict]:
    row = {"bench": "train", "unit": "tok/s", "target": None, "ok": None}
    ours, plain = results["edgeft"], results["plain"]
    ratio = ours["tokens_per_s"] / plain["tokens_per_s"]
    rows = [
        {**row, "metric": f"{case} tokens/s, edgeft ({ours['precision']})", "value": ours["tokens_per_s"]},
        {**row, "metric": f"{case} tokens/s, plain loop (fp32)", "value": plain["tokens_per_s"]},
        {**row, "metric": f"{case} edgeft / plain tokens/s", "value": ratio, "unit": "x",
         "target": f">= {target}" if target else None, "ok": ratio >= target if target else None},
    ]
    if "edgeft-fp32" in results:  # auto picked bf16: the gain where the CPU has none
        fp32 = results["edgeft-fp32"]["tokens_per_s"] / plain["tokens_per_s"]
        rows.append({**row, "metric": f"{case} edgeft / plain, bf16 off", "value": fp32, "unit": "x"})
    elif target:
        rows.append({**row, "metric": f"{case} edgeft / plain, bf16 off (auto = fp32 here)", "value": ratio,
                     "unit": "x"})
    # Per CPU-second of the side's process: what a busy machine's wall clock blurs (threads waiting count too).
    rows.append({**row, "metric": f"{case} edgeft / plain tokens per CPU-second", "unit": "x",
                 "value": ours["tokens_per_cpu_s"] / plain["tokens_per_cpu_s"]})
    rows += [{**row, "metric": f"{case} peak RSS, {name}", "value": results[name]["peak_mb"], "unit": "MiB"}
             for name in ("edgeft", "plain")]
    return rows


def _demo_rows(work: Path) -> list[dict]:
    from edgeft.demo.smollm2 import import_demo_base
    from edgeft.demo.sql_task import write_task

    base = import_demo_base(work / "smollm2-base", log=lambda _: None)
    data = dict(write_task(work / "demo-data"))["train"]
    settings = _demo_settings()
    sides = {"edgeft": ("edgeft", settings), "plain": ("plain", settings),
             "reference": ("edgeft", {**settings, "packing": False, "precision": "fp32"}),
             "unshared": ("edgeft", {**settings, "share_prefixes": False})}
    from edgeft.train.precision import resolve_precision

    if resolve_precision(settings.get("precision", "auto")).bf16:
        sides["edgeft-fp32"] = ("edgeft", {**settings, "precision": "fp32"})
    curve = max(CURVE_STEPS, STEPS)
    steps = {name: STEPS for name in sides} | {"edgeft": curve, "reference": curve}
    results = _interleaved(sides, base, data, work / "demo-runs", steps)
    difference = mean_relative_difference(results["edgeft"]["losses"], results["reference"]["losses"])
    case = "SmolLM2-135M lora, demo data"
    unshared = results["unshared"]["tokens_per_s"] / results["plain"]["tokens_per_s"]
    return [*_rows(case, results, 2.0),
            {"bench": "train", "metric": f"{case} edgeft / plain, prefixes not shared", "value": unshared,
             "unit": "x", "target": None, "ok": None},
            {"bench": "train", "metric": f"{case}: loss curve, {curve} steps, vs fp32 unpacked",
             "value": 100 * difference, "unit": "%", "target": "<= 2%", "ok": difference <= 0.02}]


def run(cache_dir: Path) -> list[dict]:
    from tests.factory import build_model

    work = Path(cache_dir) / "train"
    work.mkdir(parents=True, exist_ok=True)
    base = build_model("llama", aligned=True)  # hidden 256, intermediate 512, 2 layers
    data = _chat_data(work / "train.jsonl")
    settings = {**QLORA_SETTINGS, "max_steps": STEPS + 1}
    qlora = _interleaved({"edgeft": ("edgeft", settings), "plain": ("plain", settings)}, base, data,
                         work / "qlora-runs", {"edgeft": STEPS, "plain": STEPS})
    return [*_rows("qlora fixture", qlora, None), *_demo_rows(work)]
