"""Training throughput: `edgeft train` vs a plain transformers + peft loop, same model, data and settings.

Both train QLoRA (NF4 + double quant, fp32 compute on CPU) with r=16 on all linears, gradient checkpointing,
micro-batch 4, 4 micro-batches per optimizer step, AdamW + cosine, on the same chat data with the same
assistant-only labels, for the same number of optimizer steps. Throughput = real (non-padding) tokens per second
of the optimizer-step loop, model loading excluded in both. Target: edgeft / plain >= 1.0.
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


def _plain_loop(base: Path, data: Path) -> float:
    """What a user writes from the transformers/peft docs: DataLoader, model(..., labels=...), loss.backward()."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, get_cosine_schedule_with_warmup

    from edgeft.data.io import read_conversations
    from edgeft.data.masking import build_example

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    examples = [build_example(c["messages"], tokenizer, max_len=SETTINGS["max_len"]) for c in read_conversations(data)]
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(base), quantization_config=quant, device_map="cpu",
                                                 dtype=torch.float32)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collate(batch):
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    loader = torch.utils.data.DataLoader(examples, batch_size=4, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0))
    accum = SETTINGS["effective_batch"] // SETTINGS["micro_batch"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=SETTINGS["lr"])
    scheduler = get_cosine_schedule_with_warmup(optimizer, 1, STEPS)
    model.train()
    tokens, batches = 0, iter(loader)
    started = time.perf_counter()
    for _ in range(STEPS):
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


def _edgeft(base: Path, data: Path, out: Path) -> dict:
    from edgeft.train import train

    shutil.rmtree(out, ignore_errors=True)
    train(base, data, out, config=dict(SETTINGS), progress=False)
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
    ]
