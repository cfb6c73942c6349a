"""Throughput the way llama-bench measures it: prompt processing (pp) of N random tokens in one batch, and token
generation (tg) of M tokens one decode at a time from an empty context; median over R repeats.

Each model is measured in a fresh child process: peak RSS is a per-process high-water mark, so measuring a second
model in the same process would report the larger of the two, and a fresh process also gives both models the
same cold start. A fine-tune of the same architecture and quant type must run as fast as its base; when it does
not, a tensor was written in a slower type.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from convert.common.errors import EdgeftError
from runtime.eval_settings import SettingError
from runtime.load import check_gguf


def _peak_rss_mib() -> float:
    # Linux: VmHWM is this process's own high-water mark. ru_maxrss is not: it survives exec, so a child started
    # from a large parent (a test runner holding torch) would report the parent's size.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _measure_here(model_path: str, n_prompt: int, n_gen: int, threads: int | None, repeat: int) -> dict:
    from runtime.load import open_gguf

    start = time.perf_counter()
    llm = open_gguf(model_path, n_ctx=max(n_prompt, n_gen + 1) + 16, threads=threads)
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    # Random ids, as llama-bench uses: throughput must not depend on what the text says.
    prompt = [int(t) for t in rng.integers(0, llm.n_vocab(), size=n_prompt)]
    llm.reset()
    llm.eval(prompt[: min(16, n_prompt)])  # warm-up: the first decodes of each batch shape allocate buffers
    llm.reset()
    llm.eval([max(llm.token_bos(), 0)])
    pp_rates, tg_rates = [], []
    for _ in range(repeat):
        if n_prompt:
            llm.reset()
            start = time.perf_counter()
            llm.eval(prompt)
            pp_rates.append(n_prompt / (time.perf_counter() - start))
        if n_gen:
            llm.reset()
            token = max(llm.token_bos(), 0)
            start = time.perf_counter()
            for _step in range(n_gen):
                llm.eval([token])
            tg_rates.append(n_gen / (time.perf_counter() - start))
    used_threads, batch_threads = llm.context_params.n_threads, llm.context_params.n_threads_batch
    llm.close()
    return {
        "model": model_path, "size_mib": os.path.getsize(model_path) / 2**20, "load_s": load_s,
        "pp_tok_s": statistics.median(pp_rates) if pp_rates else None,
        "tg_tok_s": statistics.median(tg_rates) if tg_rates else None,
        "pp_runs": pp_rates, "tg_runs": tg_rates, "n_prompt": n_prompt, "n_gen": n_gen, "repeat": repeat,
        "threads": used_threads, "threads_batch": batch_threads, "peak_rss_mib": _peak_rss_mib(),
    }


def measure(model_path: str | os.PathLike, *, n_prompt: int = 512, n_gen: int = 128, threads: int | None = None,
            repeat: int = 3, isolate: bool = True) -> dict:
    """pp/tg tokens per second (median of `repeat`), load time, file size and peak RSS of one GGUF.

    Example: `measure("model-Q4_K_M.gguf", n_prompt=512, n_gen=128)["tg_tok_s"]`.
    """
    if repeat < 1 or n_prompt < 0 or n_gen < 0:
        raise SettingError(f"<repeat> {repeat}, <n_prompt> {n_prompt}, <n_gen> {n_gen}: <repeat> must be at least 1 "
                           "and the token counts 0 or more", "repeat", "n_prompt", "n_gen")
    path = str(check_gguf(model_path))
    if not isolate:
        return _measure_here(path, n_prompt, n_gen, threads, repeat)
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    request = json.dumps([path, n_prompt, n_gen, threads, repeat])
    done = subprocess.run([sys.executable, "-m", "runtime.throughput", request], capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeftError(f"{path}: throughput measurement failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _merge(rounds: list[dict]) -> dict:
    merged = dict(rounds[0])
    for key in ("pp_runs", "tg_runs"):
        merged[key] = [rate for result in rounds for rate in result[key]]
    merged["pp_tok_s"] = statistics.median(merged["pp_runs"]) if merged["pp_runs"] else None
    merged["tg_tok_s"] = statistics.median(merged["tg_runs"]) if merged["tg_runs"] else None
    merged["load_s"] = statistics.median(result["load_s"] for result in rounds)
    merged["peak_rss_mib"] = max(result["peak_rss_mib"] for result in rounds)
    merged["repeat"] = len(rounds)
    merged["paired_rounds"] = True  # run i of this result and of its partner were measured back to back
    return merged


def measure_pair(model_path: str | os.PathLike, other_path: str | os.PathLike, *, n_prompt: int = 512,
                 n_gen: int = 128, threads: int | None = None, repeat: int = 3) -> tuple[dict, dict]:
    """Measure two GGUFs in alternating rounds (A, B, A, B, ...), one fresh process per round, so that load from
    other programs on the machine hits both alike; medians over the rounds. This is what the speed gate uses:
    measured one after the other, two identical models can differ by 2x on a busy laptop."""
    rounds: tuple[list[dict], list[dict]] = ([], [])
    for _ in range(repeat):
        for index, path in enumerate((model_path, other_path)):
            rounds[index].append(measure(path, n_prompt=n_prompt, n_gen=n_gen, threads=threads, repeat=1))
    return _merge(rounds[0]), _merge(rounds[1])


def speed_ratio(model: dict, base: dict) -> dict:
    """model/base for pp and tg (1.0 = as fast). For alternating rounds (`measure_pair`) it is the median of the
    per-round ratios: a burst of load from another program slows both halves of one round, so it cancels in that
    round's ratio, while a ratio of two medians can still take one model's slow round against the other's fast
    one (measured: 0.77 for two same-size files on a 2-core box at load 8)."""
    def ratio(key: str):
        runs = key.replace("_tok_s", "_runs")
        paired = model.get("paired_rounds") and base.get("paired_rounds")
        if paired and model.get(runs) and len(model[runs]) == len(base.get(runs) or ()):
            return statistics.median(a / b for a, b in zip(model[runs], base[runs]))
        return model[key] / base[key] if model.get(key) and base.get(key) else None

    return {"pp": ratio("pp_tok_s"), "tg": ratio("tg_tok_s")}


if __name__ == "__main__":  # the child process of measure()
    try:
        result = _measure_here(*json.loads(sys.argv[1]))
    except EdgeftError as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result))
