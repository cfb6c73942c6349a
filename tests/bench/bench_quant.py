"""Quantization benchmark on the Qwen2.5-0.5B-shaped generated model (bf16, tied embeddings, hidden 896):
HF -> Q4_K_M in one streaming pass, and F16 GGUF -> Q4_K_M, each in its own process (2 kernel threads) so its
wall time and peak RSS are its own.

Reference on this 2-core machine: llama.cpp takes 13.3 s (convert F16) + 7.7 s (llama-quantize Q4_K_M, 2 threads)
and ~1 GB peak RSS. Targets: one pass <= 15 s and <= 600 MB; GGUF -> Q4_K_M <= 7.7 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
THREADS = 2

ONE_PASS = """
import json, resource, sys
from convert import convert_model
convert_model(sys.argv[1], sys.argv[2], outtype="q4_k_m", threads=int(sys.argv[3]))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024, "cpu_s": usage.ru_utime + usage.ru_stime}))
"""

GGUF_TO_GGUF = """
import json, resource, sys
from convert.quant.gguf_io import quantize_gguf
quantize_gguf(sys.argv[1], sys.argv[2], "Q4_K_M", threads=int(sys.argv[3]))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024, "cpu_s": usage.ru_utime + usage.ru_stime}))
"""

# The same job done by llama.cpp's own quantizer (llama_model_quantize in libllama, what llama-quantize calls), in
# the same conditions: a fair reference when the machine is busy.
LLAMA_CPP_QUANTIZE = """
import ctypes, json, resource, sys
from pathlib import Path
import llama_cpp
from tests.test_quant_reference import QuantizeParams
lib = ctypes.CDLL(str(sorted((Path(llama_cpp.__file__).parent / "lib").glob("libllama.*"))[0]))
lib.llama_model_quantize_default_params.restype = QuantizeParams
lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantizeParams)]
params = lib.llama_model_quantize_default_params()
params.ftype, params.nthread = 15, int(sys.argv[3])  # LLAMA_FTYPE_MOSTLY_Q4_K_M
assert lib.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)) == 0
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024, "cpu_s": usage.ru_utime + usage.ru_stime}))
"""


def _child(script: str, *args: str) -> dict:
    started = time.perf_counter()
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           **{key: value for key, value in os.environ.items() if key.startswith("EDGEFT_")}}
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "child failed")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_rss_mb": figures["peak_rss_bytes"] / 1e6, "cpu_s": figures["cpu_s"]}


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk = fa.read(1 << 24)
            if chunk != fb.read(1 << 24):
                return False
            if not chunk:
                return True


def _row(metric, value, unit, target=None, ok=None):
    return {"bench": "quant", "metric": metric, "value": float(value), "unit": unit, "target": target, "ok": ok}


def imatrix_kld_rows(work: Path) -> list[dict]:
    """Does our imatrix help? Q4_K_M with and without it, mean KLD vs F16 on held-out text (aligned llama fixture;
    calibration and held-out text are disjoint samples of the fixture corpus)."""
    from convert import convert_model
    from edgeft.imatrix import compute_imatrix
    from runtime.kld import compare
    from tests import corpus
    from tests.factory import build_model

    model = build_model("llama", aligned=True)
    calib = work / "calib.jsonl"
    lines = corpus.training_text(lines=400, seed=7)
    calib.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                             + "\n" for q, a in zip(lines[0::2], lines[1::2])))
    imatrix = compute_imatrix(model, calib, work / "fixture-imatrix.gguf", threads=THREADS)
    f16 = convert_model(model, work / "fixture-f16.gguf", outtype="f16")
    held_out = corpus.training_text(lines=120, seed=99)
    texts = [" ".join(held_out[i:i + 12]) for i in range(0, len(held_out), 12)]
    rows = []
    results = {}
    for label, matrix in (("without", None), ("with", imatrix)):
        quantized = convert_model(model, work / f"fixture-q4_k_m-{label}.gguf", outtype="q4_k_m", imatrix=matrix)
        results[label] = compare(quantized, f16, texts, n_ctx=512, threads=THREADS)
        rows.append(_row(f"fixture Q4_K_M mean KLD vs F16, {label} imatrix", results[label]["kld_mean"], "nats"))
    better = results["with"]["kld_mean"] < results["without"]["kld_mean"]
    rows.append(_row("fixture Q4_K_M KLD ratio with/without imatrix",
                     results["with"]["kld_mean"] / results["without"]["kld_mean"], "x", "< 1", better))
    return rows


def run(cache_dir: Path) -> list[dict]:
    from convert import convert_model
    from convert.quant import kernel_backend
    from tests.bench.bench_convert import build_bench_model

    cache_dir = Path(cache_dir)
    model_dir = build_bench_model(cache_dir)
    work = cache_dir / "bench_quant"
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / "qwen0.5b-shape-f16.gguf"
    if not f16.exists():
        convert_model(model_dir, f16, outtype="f16")

    one_pass = _child(ONE_PASS, str(model_dir), str(work / "one-pass-Q4_K_M.gguf"), str(THREADS))
    from_gguf = _child(GGUF_TO_GGUF, str(f16), str(work / "from-f16-Q4_K_M.gguf"), str(THREADS))
    try:
        reference = _child(LLAMA_CPP_QUANTIZE, str(f16), str(work / "llama-cpp-Q4_K_M.gguf"), str(THREADS))
    except Exception:  # llama-cpp-python missing or another struct layout: the row is simply absent
        reference = None
    size_mb = (work / "one-pass-Q4_K_M.gguf").stat().st_size / 1e6
    rows = [
        _row(f"HF -> Q4_K_M one pass ({kernel_backend()}, {THREADS} thr)", one_pass["seconds"], "s", "<= 15 s",
             one_pass["seconds"] <= 15),
        _row("HF -> Q4_K_M one pass CPU time (user+sys)", one_pass["cpu_s"], "s"),
        _row("HF -> Q4_K_M one pass peak RSS", one_pass["peak_rss_mb"], "MB", "<= 600 MB",
             one_pass["peak_rss_mb"] <= 600),
        _row(f"F16 GGUF -> Q4_K_M ({THREADS} thr)", from_gguf["seconds"], "s", "<= 7.7 s", from_gguf["seconds"] <= 7.7),
        _row("F16 GGUF -> Q4_K_M CPU time (user+sys)", from_gguf["cpu_s"], "s"),
        _row("F16 GGUF -> Q4_K_M peak RSS", from_gguf["peak_rss_mb"], "MB"),
        _row("Q4_K_M file size", size_mb, "MB"),
    ]
    if reference:
        rows += [
            _row(f"same job by llama.cpp's llama_model_quantize ({THREADS} thr)", reference["seconds"], "s"),
            _row("llama.cpp llama_model_quantize CPU time (user+sys)", reference["cpu_s"], "s"),
            _row("llama.cpp llama_model_quantize peak RSS", reference["peak_rss_mb"], "MB"),
            _row("edgeft / llama.cpp wall time, F16 GGUF -> Q4_K_M", from_gguf["seconds"] / reference["seconds"], "x",
                 "<= 1", from_gguf["seconds"] <= reference["seconds"]),
        ]
        identical = _same_file(work / "from-f16-Q4_K_M.gguf", work / "llama-cpp-Q4_K_M.gguf")
        rows.append(_row("Q4_K_M file byte-identical to llama.cpp's (1 = yes)", float(identical), "", "1", identical))
    for name in ("one-pass-Q4_K_M.gguf", "from-f16-Q4_K_M.gguf", "llama-cpp-Q4_K_M.gguf"):
        (work / name).unlink(missing_ok=True)  # 400 MB each; the F16 input stays cached
    return rows + imatrix_kld_rows(work)
