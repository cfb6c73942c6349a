"""Runtime benchmark: throughput of a fine-tune vs its base at the same quant type (must be ≥ 0.95×), the cost of
quantization in KLD / top-1 against F16, and the wall time of a full `run_eval` on the fixture.

`run(cache_dir)` returns rows for the lead's runner (`make bench`)."""

from __future__ import annotations

import json
import pathlib
import time


# One thread: on a shared 2-core box a second llama.cpp thread spends its time in barrier spins while the other
# is descheduled (measured: 512-token batches 4x slower with 2 threads at load 9), which would swamp the figures.
THREADS = 1


def _row(bench, metric, value, unit, target=None, ok=None):
    return {"bench": bench, "metric": metric, "value": float(value), "unit": unit, "target": target, "ok": ok}


def run(cache_dir: pathlib.Path) -> list[dict]:
    from convert import convert_model
    from runtime.evaluate import run_eval
    from runtime.kld import compare
    from runtime.perplexity import default_probe_text
    from runtime.throughput import measure_pair, speed_ratio
    from tests.factory import build_model

    work = pathlib.Path(cache_dir) / "bench_runtime"
    work.mkdir(parents=True, exist_ok=True)
    tuned_dir = build_model("llama", aligned=True)
    base_dir = build_model("llama", aligned=True, seed=1)
    gguf = {}
    for name, source, outtype in (("f16", tuned_dir, "f16"), ("q8_0", tuned_dir, "q8_0"),
                                  ("q4_k_m", tuned_dir, "q4_k_m"), ("base_q4_k_m", base_dir, "q4_k_m")):
        gguf[name] = convert_model(source, work / f"{name}.gguf", outtype=outtype)

    rows = []
    tuned, base = measure_pair(gguf["q4_k_m"], gguf["base_q4_k_m"], n_prompt=512, n_gen=128, repeat=5,
                               threads=THREADS)
    ratio = speed_ratio(tuned, base)
    rows += [
        _row("runtime.throughput", "pp512 Q4_K_M", tuned["pp_tok_s"], "tok/s"),
        _row("runtime.throughput", "tg128 Q4_K_M", tuned["tg_tok_s"], "tok/s"),
        _row("runtime.throughput", "tg ratio fine-tune/base (same quant)", ratio["tg"], "x", ">= 0.95",
             ratio["tg"] >= 0.95),
        _row("runtime.throughput", "load time Q4_K_M", tuned["load_s"], "s"),
        _row("runtime.throughput", "peak RSS Q4_K_M", tuned["peak_rss_mib"], "MiB"),
    ]

    text = default_probe_text()
    texts = [text[i:i + 1000] for i in range(0, len(text), 1000)]
    for name in ("q8_0", "q4_k_m"):
        started = time.perf_counter()
        result = compare(gguf[name], gguf["f16"], texts, n_ctx=512, threads=THREADS)
        rows += [
            _row("runtime.kld", f"mean KLD {name} vs F16", result["kld_mean"], "nats"),
            _row("runtime.kld", f"top-1 agreement {name}", result["top1_agreement"], "%"),
            _row("runtime.kld", f"time {name} ({result['n_tokens']} tokens)", time.perf_counter() - started, "s"),
        ]

    eval_path = work / "eval.jsonl"
    eval_path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                                          {"role": "assistant", "content": f"Answer {i}"}]}) + "\n"
                                 for i in range(20)))
    started = time.perf_counter()
    run_eval(gguf["q4_k_m"], eval_path, work / "eval", baseline=gguf["base_q4_k_m"], reference=gguf["f16"],
             max_tokens=32, n_ctx=1024, threads=THREADS)
    rows.append(_row("runtime.eval", "run_eval wall time (20 ex, baseline+probe+KLD+speed)",
                     time.perf_counter() - started, "s"))
    return rows
