"""The demo's base model: a small llama-architecture LM pretrained for a few minutes on CPU, built once and cached.

Its text is what every Python install has: the docstrings of the standard library, read with `ast` from the source
files (nothing is imported, so no module runs), plus generic chat turns in ChatML made from those docstrings and
small talk. The tokenizer is a byte-level BPE trained on the same text, with ChatML specials and a ChatML chat
template. The result is a real, weak LM: it speaks docstring-English and ChatML, and has never seen the SQL task
(SQL-flavoured modules are left out of its corpus).

Example:
    build_base_model(Path(".cache/demo/base"))   # config.json, model.safetensors, tokenizer files, README.md
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import random
import sysconfig
import time
from pathlib import Path

from edgeft.demo.vocabulary import ADJECTIVES, CATEGORIES, CITIES, NOUNS
from edgeft.demo import refuse_foreign_folder
from convert.common.fsutil import atomic_dir, check_writable

# Everything that decides the weights; its hash names the cache entry, so a change rebuilds.
RECIPE = {
    "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
    "seq_len": 128, "batch_size": 16, "steps": 560, "lr": 3e-3, "warmup": 30, "seed": 0, "threads": 1,
    "corpus_chars": 6_000_000, "chat_fraction": 0.25, "reading_fraction": 0.75, "place_texts": 1200, "version": 4,
}

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2's pre-tokenizer: digits split one by one, which llama.cpp knows as the "qwen2" pre-type.
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                     r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Left out so the base cannot have learned SQL from its corpus; tests and tools are noise.
EXCLUDED_PARTS = {"sqlite3", "dbm", "test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "ensurepip"}

LICENSE_CARD = """---
license: apache-2.0
language: en
pipeline_tag: text-generation
---
# edgeft demo base

A {params:,}-parameter llama-architecture LM pretrained by `edgeft demo` for {steps} steps on the docstrings of
Python's standard library plus generic ChatML chat turns. A weak model on purpose: the base the demo fine-tunes.
"""


@functools.lru_cache(maxsize=1)
def stdlib_docstrings() -> tuple[tuple[str, str], ...]:
    """(qualified name, docstring) for modules, classes and functions of the standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if EXCLUDED_PARTS.intersection(rel.parts) or "sql" in str(rel).lower():
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for node in [tree, *ast.walk(tree)]:
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) > 40:
                name = module if isinstance(node, ast.Module) else f"{module}.{node.name}"
                found.append((name, doc))
    return tuple(found)


SMALL_TALK = [
    ("hello", "Hello! How can I help you today?"),
    ("hi there", "Hi! What can I do for you?"),
    ("thanks a lot", "You're welcome."),
    ("who are you?", "I am a small assistant that knows a little about Python."),
    ("can you help me with python?", "Yes. Tell me what you are trying to do."),
    ("good morning", "Good morning! What would you like to know?"),
    ("what is 2 plus 3?", "2 plus 3 is 5."),
    ("bye", "Goodbye!"),
]
QUESTION_FORMS = ["What does {name} do?", "Explain {name}.", "what is {name} for", "Tell me about {name}",
                  "describe {name} briefly"]


def _first_sentence(doc: str) -> str:
    para = doc.strip().split("\n\n", 1)[0].replace("\n", " ")
    return para.split(". ", 1)[0].rstrip(".") + "."


def _reading_turn(rng: random.Random, name: str, doc: str) -> tuple[str, str]:
    """A chat turn whose answer must be read out of the question (copy a phrase, pick the number, name the module):
    generic skills any chat model has, and what lets a later fine-tune put the user's values into its answer."""
    words = [w.strip(".,:;()`'\"") for w in doc.split()]
    words = [w for w in words if w.isalpha()] or ["value"]
    start = rng.randrange(len(words))
    phrase = " ".join(words[start:start + rng.randint(2, 5)])
    number = str(rng.randint(1, 999))
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(["repeat after me: {p}", "say exactly this: {p}", "Echo: {p}"]).format(p=phrase), phrase
    if kind == 1:
        text = f"{phrase} {number} {rng.choice(words)}"
        return rng.choice(["which number is in '{t}'?", "find the number: {t}", "what number appears here: {t}"]
                          ).format(t=text), number
    if kind == 2 and "." in name:
        return rng.choice(["which module is {n} in?", "what module defines {n}"]).format(n=name), name.rsplit(".", 1)[0]
    if kind == 3:
        last = phrase.split()[-1]
        return rng.choice(["what is the last word of: {p}", "last word in '{p}'?"]).format(p=phrase), last
    if kind == 4:
        return rng.choice(["what is the name of {n} without the module?", "short name of {n}?"]).format(n=name), \
            name.rsplit(".", 1)[-1]
    # words -> a Python expression with the numbers copied over
    a, b = number, str(rng.randint(1, 999))
    op_words, op = rng.choice([("plus", "+"), ("minus", "-"), ("times", "*"), ("bigger than", ">"),
                               ("smaller than", "<"), ("equal to", "==")])
    form = rng.choice(["write {a} {w} {b} in python", "{a} {w} {b} as code?", "python expression for {a} {w} {b}"])
    return form.format(a=a, w=op_words, b=b), f"{a} {op} {b}"


def _chatml(turns: list[tuple[str, str]]) -> str:
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)


def place_and_thing_texts(rng: random.Random, n: int) -> list[str]:
    """Plain sentences naming the demo shop's cities, goods, categories and years, like any general corpus would:
    it gives the tokenizer whole tokens for those words (a value is then one token to carry over), never SQL."""
    # Quoted half the time: after a quote a word has no leading space, and that spelling needs its own token too.
    def name(words):
        return f"'{rng.choice(words)}'" if rng.random() < 0.5 else rng.choice(words)

    products = [f"{adjective} {noun}" for adjective in ADJECTIVES for noun in NOUNS.values()]
    forms = [lambda: f"{name(CITIES)} is a city in Europe, and many people live in {name(CITIES)}.",
             lambda: f"The {name(products)} was made in {rng.randint(2012, 2025)} and shipped from {name(CITIES)}.",
             lambda: f"Shops sell {name(CATEGORIES)}, {name(CATEGORIES)} and {name(CATEGORIES)} to customers.",
             lambda: f"In {rng.randint(2012, 2025)} the {rng.choice(products).lower()} cost {rng.randint(5, 500)} "
                     f"dollars."]
    return [" ".join(rng.choice(forms)() for _ in range(4)) for _ in range(n)]


def build_corpus(recipe: dict = RECIPE) -> list[str]:
    """Documents (plain docstrings and ChatML chats), shuffled with the recipe's seed, about corpus_chars long."""
    rng = random.Random(recipe["seed"])
    docs = list(stdlib_docstrings())
    rng.shuffle(docs)
    texts, chats, size = [], [], 0
    chat_budget = recipe["corpus_chars"] * recipe["chat_fraction"]
    for name, doc in docs:
        if size > recipe["corpus_chars"]:
            break
        texts.append(doc)
        size += len(doc)
        if size * recipe["chat_fraction"] < chat_budget and rng.random() < 0.5:
            turns = []
            for _ in range(rng.randint(1, 3)):
                if rng.random() < recipe.get("reading_fraction", 0.0):
                    question, answer = _reading_turn(rng, name, doc)
                else:
                    question, answer = rng.choice(QUESTION_FORMS).format(name=name), _first_sentence(doc)
                turns += [("user", question), ("assistant", answer)]
            if rng.random() < 0.3:
                greeting, reply = rng.choice(SMALL_TALK)
                turns = [("user", greeting), ("assistant", reply), *turns]
            if rng.random() < 0.3:
                turns = [("system", "You are a helpful assistant."), *turns]
            chats.append(_chatml(turns))
    texts.extend(chats)
    texts.extend(place_and_thing_texts(rng, recipe.get("place_texts", 0)))
    rng.shuffle(texts)
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with Qwen2's pre-tokenizer and the ChatML specials as ids 0..2."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHATML_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _token_blocks(tokenizer, texts: list[str], seq_len: int):
    import torch

    eot = tokenizer.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tokenizer.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eot)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _model_config(recipe: dict, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=recipe["vocab_size"], hidden_size=recipe["hidden_size"],
        intermediate_size=recipe["intermediate_size"], num_hidden_layers=recipe["num_hidden_layers"],
        num_attention_heads=recipe["num_attention_heads"], num_key_value_heads=recipe["num_key_value_heads"],
        max_position_embeddings=recipe["max_position_embeddings"], rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=tokenizer.token_to_id("<|im_end|>"),
        pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
    )


def pretrain(recipe: dict, tokenizer, texts: list[str], log=print):
    """Plain next-token training: AdamW, linear warmup then cosine decay; returns the model and the loss history."""
    import math

    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(recipe["seed"])
    blocks = _token_blocks(tokenizer, texts, recipe["seq_len"])
    model = LlamaForCausalLM(_model_config(recipe, tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    steps, warmup = recipe["steps"], recipe["warmup"]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    generator = torch.Generator().manual_seed(recipe["seed"])
    order = torch.randperm(len(blocks), generator=generator)
    history, start = [], time.time()
    model.train()
    for step in range(steps):
        index = order[(torch.arange(recipe["batch_size"]) + step * recipe["batch_size"]) % len(blocks)]
        batch = blocks[index]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(round(loss.item(), 4))
        if step % 50 == 0 or step == steps - 1:
            log(f"pretrain step {step + 1}/{steps}  loss {loss.item():.3f}  {time.time() - start:.0f}s")
    model.eval()
    return model, history, len(blocks) * recipe["seq_len"]


def _write_tokenizer_files(tokenizer, out: Path) -> None:
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": RECIPE["max_position_embeddings"],
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "chat_template": CHATML_TEMPLATE,
        "added_tokens_decoder": {str(tokenizer.token_to_id(t)): {"content": t, "special": True, "lstrip": False,
                                                                 "rstrip": False, "normalized": False,
                                                                 "single_word": False} for t in CHATML_SPECIALS},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2))


def recipe_key(recipe: dict = RECIPE) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _stamped_key(stamp: Path) -> str | None:
    """The recipe key an earlier pretraining recorded; None when there is none or the stamp is damaged (a damaged
    stamp means: pretrain again)."""
    try:
        record = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("recipe_key") if isinstance(record, dict) else None


def build_base_model(out_dir: Path, recipe: dict = RECIPE, *, force: bool = False, log=print) -> Path:
    """Pretrain the demo base into `out_dir` (a HF folder) unless the same recipe is already there."""
    out_dir = Path(out_dir)
    if not force and _stamped_key(out_dir / "pretrain.json") == recipe_key(recipe):
        log(f"demo base: cached at {out_dir}")
        return out_dir
    # Before minutes of pretraining: the folder it replaces must be a demo base, and writable.
    refuse_foreign_folder(out_dir)
    check_writable(out_dir)
    import torch

    # One thread: the same float reduction order on every machine (deterministic weights), and on a busy 2-core
    # box a single thread measured ~5x faster than two fighting other processes.
    torch.set_num_threads(recipe["threads"])
    start = time.time()
    texts = build_corpus(recipe)
    tokenizer = train_tokenizer(texts, recipe["vocab_size"])
    log(f"demo base: corpus {len(texts)} documents, {sum(map(len, texts)):,} chars; tokenizer in "
        f"{time.time() - start:.0f}s")
    model, history, n_tokens = pretrain(recipe, tokenizer, texts, log)
    params = sum(p.numel() for p in model.parameters())
    with atomic_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        model.generation_config.eos_token_id = [tokenizer.token_to_id("<|im_end|>"),
                                                tokenizer.token_to_id("<|endoftext|>")]
        model.generation_config.save_pretrained(tmp)
        _write_tokenizer_files(tokenizer, tmp)
        (tmp / "README.md").write_text(LICENSE_CARD.format(params=params, steps=recipe["steps"]))
        (tmp / "pretrain.json").write_text(json.dumps({
            "recipe_key": recipe_key(recipe), "recipe": recipe, "parameters": params, "corpus_tokens": n_tokens,
            "seconds": round(time.time() - start, 1), "loss_first": history[0], "loss_last": history[-1],
            "loss": history}, indent=1))
    log(f"demo base: {params:,} parameters, loss {history[0]:.2f} -> {history[-1]:.2f} in "
        f"{time.time() - start:.0f}s -> {out_dir}")
    return out_dir


def general_chats(n: int, seed: int = 7) -> list[dict]:
    """`n` generic conversations like the ones in the base's corpus (docstring questions, reading turns, small talk),
    as {"messages": [...]} rows: mixed into a fine-tune's data they keep it from forgetting how to chat."""
    rng = random.Random(seed)
    docs = list(stdlib_docstrings())
    rng.shuffle(docs)
    rows, seen = [], set()
    for name, doc in docs:
        if len(rows) >= n:
            break
        if rng.random() < RECIPE["reading_fraction"]:
            question, answer = _reading_turn(rng, name, doc)
        else:
            question, answer = rng.choice(QUESTION_FORMS).format(name=name), _first_sentence(doc)
        if question in seen or not answer.strip():
            continue
        seen.add(question)
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows
