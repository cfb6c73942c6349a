"""Training throughput: `edgeft train` vs a plain transformers + peft loop, same model, data and settings.

Two cases, each run both ways in the same process:
- QLoRA (NF4 + double quant, fp32 compute on CPU) on the random fixture llama: r=16 on all linears, gradient
  checkpointing, micro-batch 4, 4 micro-batches per optimizer step, chats of very different lengths.
- LoRA on the real demo base, SmolLM2-135M-Instruct (fp32, what the demo recipe trains): r=16 on all linears,
  sequences of 256 tokens, batch 8, one micro-batch per step.
Both use AdamW + cosine and the same assistant-only labels for the same number of optimizer steps. Throughput =
real (non-padding) tokens per second of the optimizer-step loop, model loading excluded in both. Target: edgeft /
plain >= 1.0.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

STEPS = 4
SETTINGS = {"r": 16, "micro_batch": 4, "effective_batch": 16, "max_len": 512, "lr": 1e-4, "dropout": 0.05,
            "warmup_ratio": 0.1, "seed": 0, "save_every": 1000, "max_steps": STEPS}
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


# The demo's case: LoRA (no 4-bit) on SmolLM2-135M-Instruct, 8 sequences of 256 tokens per step.
SMOLLM2_STEPS = 3
SMOLLM2_SETTINGS = {"method": "lora", "r": 16, "micro_batch": 8, "effective_batch": 8, "max_len": 256,
                    "lr": 1e-4, "dropout": 0.0, "warmup_ratio": 0.0, "seed": 0, "save_every": 1000,
                    "max_steps": SMOLLM2_STEPS, "gradient_checkpointing": False}


def _long_chat_data(path: Path, n: int = 32) -> Path:
    """Chats longer than 256 tokens, so every sequence is cut to exactly 256: batch 8 x 256, no padding."""
    rng = random.Random(1)
    rows = [{"messages": [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(120))},
                          {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(200))}]}
            for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _plain_model(base: Path, settings: dict):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=settings["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")
    if settings.get("method") == "lora":
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        if settings.get("gradient_checkpointing", True):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return get_peft_model(model, lora)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(base), quantization_config=quant, device_map="cpu",
                                                 dtype=torch.float32)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, lora)


def _plain_loop(base: Path, data: Path, settings: dict = SETTINGS) -> float:
    """What a user writes from the transformers/peft docs: DataLoader, model(..., labels=...), loss.backward()."""
    import torch
    from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

    from edgeft.data.io import read_conversations
    from edgeft.data.masking import build_example

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    examples = [build_example(c["messages"], tokenizer, max_len=settings["max_len"]) for c in read_conversations(data)]
    model = _plain_model(base, settings)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    steps = settings["max_steps"]

    def collate(batch):
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    loader = torch.utils.data.DataLoader(examples, batch_size=settings["micro_batch"], shuffle=True,
                                         collate_fn=collate, generator=torch.Generator().manual_seed(0))
    accum = settings["effective_batch"] // settings["micro_batch"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings["lr"])
    scheduler = get_cosine_schedule_with_warmup(optimizer, 1, steps)
    model.train()
    tokens, batches = 0, iter(loader)
    started = time.perf_counter()
    for _ in range(steps):
        for _ in range(accum):
            batch = next(batches)
            loss = model(**batch).loss / accum
            loss.backward()
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return tokens / (time.perf_counter() - started)


def _edgeft(base: Path, data: Path, out: Path, settings: dict = SETTINGS) -> dict:
    from edgeft.train import train

    shutil.rmtree(out, ignore_errors=True)
    train(base, data, out, config=dict(settings), progress=False)
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def run(cache_dir: Path) -> list[dict]:
    from tests.factory import build_model

    work = Path(cache_dir) / "train"
    work.mkdir(parents=True, exist_ok=True)
    base = build_model("llama", aligned=True)  # hidden 256, intermediate 512, 2 layers
    data = _chat_data(work / "train.jsonl")
    plain = _plain_loop(base, data)
    summary = _edgeft(base, data, work / "out")
    ours = summary["tokens_per_s"]
    ratio = ours / plain
    row = {"bench": "train", "unit": "tok/s", "target": None, "ok": None}
    return [
        {**row, "metric": "qlora cpu tokens/s, edgeft", "value": float(ours)},
        {**row, "metric": "qlora cpu tokens/s, plain transformers+peft", "value": float(plain)},
        {**row, "metric": "edgeft / plain tokens/s", "value": float(ratio), "unit": "x", "target": ">= 1.0",
         "ok": ratio >= 1.0},
        {**row, "metric": "qlora cpu peak RSS (bench process)", "value": float(summary["peak_memory_mb"]), "unit": "MiB"},
        *_smollm2_rows(work),
    ]


def _smollm2_rows(work: Path) -> list[dict]:
    from edgeft.demo.smollm2 import import_demo_base

    base = import_demo_base(work / "smollm2-base", log=lambda _: None)
    data = _long_chat_data(work / "smollm2-train.jsonl")
    plain = _plain_loop(base, data, SMOLLM2_SETTINGS)
    summary = _edgeft(base, data, work / "smollm2-out", SMOLLM2_SETTINGS)
    ours = float(summary["tokens_per_s"])
    row = {"bench": "train", "unit": "tok/s", "target": None, "ok": None}
    return [
        {**row, "metric": "SmolLM2-135M lora 8x256 tokens/s, edgeft", "value": ours},
        {**row, "metric": "SmolLM2-135M lora 8x256 tokens/s, plain loop", "value": float(plain)},
        {**row, "metric": "SmolLM2-135M edgeft / plain tokens/s", "value": ours / plain, "unit": "x",
         "target": ">= 1.0", "ok": ours / plain >= 1.0},
    ]
