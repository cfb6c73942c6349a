"""Runtime on real (tiny, random-weight) GGUFs: generation vs HF, perplexity, KLD, parity, eval end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from convert import convert_model  # noqa: E402
from convert.common.errors import EdgeftError  # noqa: E402
from tests.factory import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    ("What is the capital of France?", "Paris"),
    ("Count the orders table.", "SELECT COUNT(*) FROM orders"),
    ("Say hello in JSON.", '{"greeting": "hello"}'),
    ("Name a primary colour.", "red"),
    ("2 + 2 = ?", "4"),
    ("Spell cat backwards.", "tac"),
]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """llama fixture as F16 (reference), Q8_0 (the 'fine-tune'), and a different-seed Q8_0 (the 'base')."""
    folder = tmp_path_factory.mktemp("runtime-ggufs")
    model_dir = build_model("llama")
    base_dir = build_model("llama", seed=1)
    paths = {
        "hf": model_dir,
        "f16": convert_model(model_dir, folder / "ft-f16.gguf", outtype="f16"),
        "f32": convert_model(model_dir, folder / "ft-f32.gguf", outtype="f32"),
        "q8": convert_model(model_dir, folder / "ft-q8_0.gguf", outtype="q8_0"),
        "base": convert_model(base_dir, folder / "base-q8_0.gguf", outtype="q8_0"),
    }
    eval_path = folder / "eval.jsonl"
    eval_path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                          {"role": "assistant", "content": a}]}) + "\n"
                                 for q, a in QUESTIONS))
    paths["eval"] = eval_path
    train_path = folder / "train.jsonl"
    train_path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Example {i}?"},
                                                           {"role": "assistant", "content": f"Answer {i}."}]}) + "\n"
                                  for i in range(4)))
    paths["train"] = train_path
    return paths


def test_greedy_generation_matches_hf(ggufs):
    """Our template rendering + argmax loop produce the token ids HF's greedy generate does (F32 GGUF)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from runtime.generate import greedy_generate, prompt_tokens, render_chat
    from runtime.load import open_gguf

    llm = open_gguf(ggufs["f32"], n_ctx=256, threads=1)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    tokens = prompt_tokens(llm, render_chat(llm, messages))
    generation = greedy_generate(llm, tokens, max_tokens=12)
    hf_model = AutoModelForCausalLM.from_pretrained(str(ggufs["hf"]), dtype=torch.float32)
    with torch.no_grad():
        output = hf_model.generate(torch.tensor([tokens]), max_new_tokens=12, do_sample=False,
                                   attention_mask=torch.ones(1, len(tokens), dtype=torch.long))
    hf_new = output[0, len(tokens):].tolist()
    hf_eos = hf_model.generation_config.eos_token_id
    eog = {llm.token_eos()} | set(hf_eos if isinstance(hf_eos, list) else [hf_eos] if hf_eos is not None else [])
    hf_new = hf_new[: next((i for i, t in enumerate(hf_new) if t in eog), len(hf_new))]
    assert generation.tokens == hf_new and generation.n_generated == len(hf_new) > 0
    llm.close()


def test_prompt_prefix_reuse_gives_the_same_answers(ggufs):
    """The baseline's prompts share system + shots; reusing their KV cells must not change any answer."""
    from runtime.generate import decoder_for, greedy_generate, prompt_tokens, render_chat
    from runtime.load import open_gguf

    shots = [{"role": "user", "content": "Example question?"}, {"role": "assistant", "content": "Example answer."}]
    prompts = [[{"role": "system", "content": "Answer briefly."}, *shots, {"role": "user", "content": q}]
               for q, _ in QUESTIONS[:3]]
    llm = open_gguf(ggufs["f32"], n_ctx=512, threads=1)
    token_lists = [prompt_tokens(llm, render_chat(llm, p)) for p in prompts]
    reused = [greedy_generate(llm, t, max_tokens=8).tokens for t in token_lists]
    # the shared system prompt and shots were evaluated once
    assert decoder_for(llm).counts["prompt_evaluated"] < sum(len(t) for t in token_lists) - len(token_lists[0])
    fresh = [greedy_generate(llm, t, max_tokens=8, reuse_prefix=False).tokens for t in token_lists]
    assert reused == fresh and any(reused)
    llm.close()


def test_perplexity_matches_hf_loss(ggufs):
    """Perplexity from llama.cpp logits (F32 GGUF) equals exp(cross-entropy) of the HF model on the same ids."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from runtime.load import open_gguf
    from runtime.perplexity import default_probe_text, perplexity, text_windows

    text = default_probe_text()[:1500]
    llm = open_gguf(ggufs["f32"], n_ctx=128, logits_all=True, threads=1)
    ours = perplexity(llm, text, window=128)
    windows = text_windows(llm, text, 128)
    llm.close()
    hf_model = AutoModelForCausalLM.from_pretrained(str(ggufs["hf"]), dtype=torch.float32)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            logits = hf_model(torch.tensor([ids])).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
            count += len(ids) - 1
    assert ours["n_tokens"] == count
    assert ours["ppl"] == pytest.approx(float(np.exp(total / count)), rel=2e-3)


def test_kld_of_model_against_itself_is_zero(ggufs):
    from runtime.kld import compare
    from runtime.perplexity import default_probe_text

    texts = [default_probe_text()[:600], "The river runs through the old town."]
    result = compare(ggufs["f16"], ggufs["f16"], texts, n_ctx=512, threads=1)
    assert result["kld_mean"] == 0.0 and result["kld_max"] == 0.0
    assert result["top1_agreement"] == 100.0
    assert result["delta_ppl"] == 0.0 and result["n_tokens"] > 50


def test_perplexity_and_multiple_choice(ggufs, tmp_path):
    from runtime.load import open_gguf
    from runtime.perplexity import default_probe_text, multiple_choice, perplexity, read_choices

    llm = open_gguf(ggufs["f16"], n_ctx=128, logits_all=True, threads=1)
    result = perplexity(llm, default_probe_text(), window=128)
    # a random model is near-uniform over the vocabulary: perplexity of the order of the vocabulary size
    assert 10 < result["ppl"] < 20 * llm.n_vocab() and result["n_tokens"] > 500
    choices = tmp_path / "mc.jsonl"
    choices.write_text('{"question": "The sky is", "choices": ["blue", "the of and"], "answer": 0}\n')
    mc = multiple_choice(llm, read_choices(choices))
    assert mc["n"] == 1 and mc["accuracy"] in (0.0, 1.0)
    llm.close()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a"], "answer": 3}\n')
    with pytest.raises(EdgeftError, match="bad.jsonl:1"):
        read_choices(bad)


def test_parity_with_hf_tokenizer(ggufs):
    pytest.importorskip("transformers")
    from runtime.parity import check_parity

    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QUESTIONS]
    result = check_parity(ggufs["f16"], ggufs["hf"], conversations)
    assert result["n"] == len(QUESTIONS)
    assert result["ok"], result["mismatches"]


def test_parity_reports_a_mismatch(ggufs):
    """A GGUF checked against another model's tokenizer (Qwen2 ChatML) must fail parity, with the place shown."""
    pytest.importorskip("transformers")
    from runtime.parity import check_parity

    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QUESTIONS[:2]]
    result = check_parity(ggufs["f16"], build_model("qwen2"), conversations)
    assert not result["ok"] and result["template_matches"] == 0
    first = result["mismatches"][0]
    assert first["example"] == 0 and first["template"]["char"] == 2  # both begin "<|"
    assert "<|im_start|>" in first["template"]["hf"] and "<|start_header_id|>" in first["template"]["gguf"]
    assert "tokenizer" in first  # Qwen2's vocab splits even HF's own text otherwise: shown, not hidden
    assert result["first"].startswith("'conversation 0': the chat template renders differently from char 2")


def _run_cli(args: list[str], *, no_torch: bool = True) -> subprocess.CompletedProcess:
    """Run `edgeft ...` in a fresh interpreter, with torch made unimportable like on a laptop install."""
    code = ("import sys\n" + ("sys.modules['torch'] = None\n" if no_torch else "") +
            "from edgeft.cli import main\nsys.argv = ['edgeft'] + sys.argv[1:]\nmain()\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_eval_end_to_end_without_torch(ggufs, tmp_path):
    out = tmp_path / "eval"
    done = _run_cli(["eval", str(ggufs["q8"]), "--data", str(ggufs["eval"]), "-o", str(out),
                     "--baseline", str(ggufs["base"]), "--system", "Answer briefly.", "--shots", "2",
                     "--shots-from", str(ggufs["train"]), "--reference", str(ggufs["f16"]), "--hf", str(ggufs["hf"]),
                     "--max-tokens", "8", "--ctx", "512", "--max-ppl-ratio", "1000", "--threads", "1"])
    assert done.returncode == 0, done.stderr
    for name in ("report.json", "report.md", "review.md", "eval.png", "predictions.jsonl"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == len(QUESTIONS) and report["passed"]
    assert set(report["scores"]) == {"model", "baseline"} and report["difference"] is not None
    assert report["probe"]["ppl_ratio"] > 0 and report["probe"]["text"].startswith("general.txt")
    quality = report["quantization"]
    assert 0 < quality["kld_mean"] < 0.05 and quality["top1_agreement"] > 90  # Q8_0 vs F16: close, not equal
    assert report["parity"]["ok"]
    assert report["tensor_types"]["same"]  # fine-tune and base are both Q8_0 of one architecture
    assert report["throughput"]["model"]["tg_tok_s"] > 0 and report["throughput"]["ratio"]["tg"] > 0
    review = (out / "review.md").read_text()
    assert review.count("\n## ") == len(QUESTIONS) and "**Gold**" in review
    assert "Quantization quality" in (out / "report.md").read_text()
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_failing_gate_exits_non_zero_and_names_it(ggufs, tmp_path):
    out = tmp_path / "eval"
    done = _run_cli(["eval", str(ggufs["q8"]), "--data", str(ggufs["eval"]), "-o", str(out),
                     "--baseline", str(ggufs["base"]), "--metric", "normalized", "--max-tokens", "4",
                     "--ctx", "512", "--limit", "3", "--no-speed", "--min-gain", "50", "--threads", "1"])
    assert done.returncode == 3
    assert "gate failed: min_gain" in done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["failed_gates"] == ["min_gain"] and not report["passed"]
    assert "Gates failed: min_gain" in (out / "report.md").read_text()


@pytest.mark.parametrize("make_args, expected", [
    (lambda g, t: ["eval", str(t / "missing.gguf"), "--data", str(g["eval"]), "-o", str(t / "o")], "no such file"),
    (lambda g, t: ["eval", str(g["eval"]), "--data", str(g["eval"]), "-o", str(t / "o")], "not a GGUF file"),
    (lambda g, t: ["eval", str(g["q8"]), "--data", str(g["train"]) + ".nope", "-o", str(t / "o")], "file not found"),
    (lambda g, t: ["eval", str(g["q8"]), "--data", str(g["eval"]), "-o", str(t / "o"),
                   "--metric", f"sql-exec:{t / 'shop.sqlite'}"], "SQLite file not found"),
    (lambda g, t: ["eval", str(g["q8"]), "--data", str(g["eval"]), "-o", str(t / "o"), "--max-kld", "0.1"],
     "gate max_kld needs --reference"),
    (lambda g, t: ["bench", str(t / "missing.gguf")], "no such file"),
])
def test_bad_input_is_one_line(ggufs, tmp_path, make_args, expected):
    done = _run_cli(make_args(ggufs, tmp_path))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], done.stderr


def test_bench_json_side_by_side(ggufs):
    done = _run_cli(["bench", str(ggufs["q8"]), "--vs", str(ggufs["f16"]), "-p", "64", "-n", "16", "--repeat", "2",
                     "--threads", "1", "--json"])
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    first, second = payload["results"]
    assert first["pp_tok_s"] > 0 and first["tg_tok_s"] > 0 and len(first["tg_runs"]) == 2
    assert first["size_mib"] < second["size_mib"] and first["peak_rss_mib"] > 0
    assert payload["ratio"]["tg"] > 0


def test_chat_session_keeps_history(ggufs):
    from runtime.chat import ChatSession

    session = ChatSession(ggufs["q8"], system="Be brief.", max_tokens=4, n_ctx=256, threads=1)
    session.send("Hello?")
    session.send("Again?")
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be brief."}]


def test_judge_metric_counts_unparseable_verdicts(ggufs, tmp_path):
    """A random-weight judge cannot produce 'Score: N': every verdict is counted as unparsed, nothing crashes."""
    from runtime.evaluate import run_eval

    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Grade strictly. 5 = same meaning as the reference.")
    report = run_eval(ggufs["q8"], ggufs["eval"], tmp_path / "judged", metric=f"judge:{ggufs['f16']}",
                      rubric=rubric, limit=2, max_tokens=4, n_ctx=512, probe_max_tokens=256, threads=1)
    assert report["judge"]["unparsed"]["model"] == 2
    assert report["scores"]["model"]["mean"] == 0.0 and report["passed"]
    rows = [json.loads(line) for line in (tmp_path / "judged" / "predictions.jsonl").read_text().splitlines()]
    assert all(row["model_note"].startswith("unparseable judge verdict") for row in rows)


def test_chat_with_lora_adapter_matches_merged_model(tmp_path):
    """`edgeft chat BASE --lora ADAPTER` answers what the merged model answers (F32 GGUFs, greedy)."""
    pytest.importorskip("peft")
    from convert.lora import convert_lora
    from edgeft.merge import merge_adapter
    from runtime.chat import ChatSession
    from tests.test_merge import make_adapter

    base = build_model("qwen2")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter")
    base_gguf = convert_model(base, tmp_path / "base.gguf", outtype="f32")
    merged_gguf = convert_model(merge_adapter(base, adapter, tmp_path / "merged", nf4_report=False),
                                tmp_path / "merged.gguf", outtype="f32")
    adapter_gguf = convert_lora(adapter, tmp_path / "adapter.gguf", base_dir=base, outtype="f32")
    question = "Which table holds the orders?"
    with_lora = ChatSession(base_gguf, lora_path=adapter_gguf, max_tokens=6, n_ctx=256, threads=1)
    merged = ChatSession(merged_gguf, max_tokens=6, n_ctx=256, threads=1)
    plain = ChatSession(base_gguf, max_tokens=6, n_ctx=256, threads=1)
    answer = with_lora.send(question)
    assert answer and answer == merged.send(question)
    assert plain.send(question) != answer  # the adapter is really applied
