"""Quantization benchmark.

1. On the Qwen2.5-0.5B-shaped generated model (bf16, tied embeddings, hidden 896): HF -> Q4_K_M in one streaming
   pass, and F16 GGUF -> Q4_K_M, each in its own process (2 kernel threads) so its wall time and peak RSS are its
   own. Reference on this 2-core machine: llama.cpp takes 13.3 s (convert F16) + 7.7 s (llama-quantize Q4_K_M,
   2 threads) and ~1 GB peak RSS. Targets: one pass <= 15 s and <= 600 MB; GGUF -> Q4_K_M <= 7.7 s.
2. Same model, same run: our HF -> IQ4_XS in one pass against llama.cpp's two steps, convert_hf_to_gguf.py -> F16
   and llama_model_quantize -> IQ4_XS (time of both, peak RSS of the larger), when llama.cpp's sources are there
   (EDGEFT_LLAMA_CPP_DIR, or the vendor/llama.cpp of llama-cpp-python's sdist unpacked under the cache).
3. On the demo base (.cache/demo/base, a real pretrained LM): every type of the menu, without and with the
   imatrix of the demo's training data — file size, bits/weight, mean KLD and top-1 agreement vs F16 on the
   held-out conversations, tg tokens/s — as rows, a markdown table and a PNG of KLD against bits per weight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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
    return rows + imatrix_kld_rows(work) + iq4_xs_pipeline_rows(model_dir, work) + menu_rows(work)


# --------------------------------------------------------------------------------------- 2. HF -> IQ4_XS

ONE_PASS_TYPE = """
import json, resource, sys
from convert import convert_model
convert_model(sys.argv[1], sys.argv[2], outtype=sys.argv[4], threads=int(sys.argv[3]))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024, "cpu_s": usage.ru_utime + usage.ru_stime}))
"""

# llama.cpp's convert_hf_to_gguf.py, run from its sources with their own gguf-py. One patch: the bench model's
# tokenizer is the fixture's freshly trained BPE, whose hash llama.cpp's table cannot know, so its pre-tokenizer
# lookup is answered with the name it has (qwen2, the regex the fixture uses). Everything timed is llama.cpp's.
LLAMA_CPP_CONVERT = """
import json, resource, runpy, sys
source = sys.argv[1]
sys.path[:0] = [source, source + "/gguf-py"]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = [source + "/convert_hf_to_gguf.py", sys.argv[2], "--outtype", "f16", "--outfile", sys.argv[3]]
runpy.run_path(source + "/convert_hf_to_gguf.py", run_name="__main__")
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024, "cpu_s": usage.ru_utime + usage.ru_stime}))
"""

LLAMA_CPP_QUANTIZE_TYPE = LLAMA_CPP_QUANTIZE.replace(
    "params.ftype, params.nthread = 15, int(sys.argv[3])  # LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "params.ftype, params.nthread = int(sys.argv[4]), int(sys.argv[3])")


def llama_cpp_sources(cache_dir: Path) -> Path | None:
    """llama.cpp's source tree (convert_hf_to_gguf.py + gguf-py): EDGEFT_LLAMA_CPP_DIR, else the sdist of the
    installed llama-cpp-python, downloaded once with pip and unpacked under the cache. None when neither works."""
    import importlib.metadata
    import tarfile

    if os.environ.get("EDGEFT_LLAMA_CPP_DIR"):
        path = Path(os.environ["EDGEFT_LLAMA_CPP_DIR"])
        return path if (path / "convert_hf_to_gguf.py").is_file() else None
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None
    tree = Path(cache_dir) / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    download = Path(cache_dir) / "sdist"
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                           "-d", str(download), f"llama-cpp-python=={version}"], capture_output=True, text=True)
    archives = sorted(download.glob(f"llama_cpp_python-{version}.tar.gz"))
    if done.returncode != 0 or not archives:
        return None
    with tarfile.open(archives[0]) as archive:
        archive.extractall(cache_dir, filter="data")
    return tree if (tree / "convert_hf_to_gguf.py").is_file() else None


def _same_tensors(a: Path, b: Path) -> bool:
    from gguf import GGUFReader

    mine = {t.name: t for t in GGUFReader(a).tensors}
    theirs = {t.name: t for t in GGUFReader(b).tensors}
    return set(mine) == set(theirs) and all(
        mine[n].tensor_type == t.tensor_type and np.array_equal(np.asarray(mine[n].data).view(np.uint8),
                                                                np.asarray(t.data).view(np.uint8))
        for n, t in theirs.items())


def iq4_xs_pipeline_rows(model_dir: Path, work: Path) -> list[dict]:
    """HF -> IQ4_XS: our one pass vs llama.cpp's convert + quantize, both measured now, in child processes."""
    from convert.quant import FILE_TYPES

    ours_path = work / "one-pass-IQ4_XS.gguf"
    ours = _child(ONE_PASS_TYPE, str(model_dir), str(ours_path), str(THREADS), "iq4_xs")
    rows = [_row(f"HF -> IQ4_XS one pass ({THREADS} thr)", ours["seconds"], "s"),
            _row("HF -> IQ4_XS one pass CPU time (user+sys)", ours["cpu_s"], "s"),
            _row("HF -> IQ4_XS one pass peak RSS", ours["peak_rss_mb"], "MB")]
    sources = llama_cpp_sources(work.parent)
    if sources is None:
        rows.append(_row("llama.cpp sources not found (EDGEFT_LLAMA_CPP_DIR): no llama.cpp IQ4_XS rows", 0, ""))
        ours_path.unlink(missing_ok=True)
        return rows
    f16, final = work / "llama-cpp-convert-F16.gguf", work / "llama-cpp-IQ4_XS.gguf"
    converted = _child(LLAMA_CPP_CONVERT, str(sources), str(model_dir), str(f16))
    quantized = _child(LLAMA_CPP_QUANTIZE_TYPE, str(f16), str(final), str(THREADS),
                       str(int(FILE_TYPES["IQ4_XS"].gguf_file_type)))
    total = converted["seconds"] + quantized["seconds"]
    peak = max(converted["peak_rss_mb"], quantized["peak_rss_mb"])
    rows += [
        _row("llama.cpp convert_hf_to_gguf.py -> F16", converted["seconds"], "s"),
        _row("llama.cpp convert_hf_to_gguf.py peak RSS", converted["peak_rss_mb"], "MB"),
        _row(f"llama.cpp llama_model_quantize F16 -> IQ4_XS ({THREADS} thr)", quantized["seconds"], "s"),
        _row("llama.cpp llama_model_quantize IQ4_XS peak RSS", quantized["peak_rss_mb"], "MB"),
        _row("edgeft / llama.cpp wall time, HF -> IQ4_XS", ours["seconds"] / total, "x", "<= 1",
             ours["seconds"] <= total),
        _row("edgeft / llama.cpp peak RSS, HF -> IQ4_XS", ours["peak_rss_mb"] / peak, "x", "<= 1",
             ours["peak_rss_mb"] <= peak),
        # bf16 -> f32 directly vs bf16 -> F16 -> f32: equal whenever every weight is representable in F16
        _row("HF -> IQ4_XS tensors identical to llama.cpp's two steps (1 = yes)", float(_same_tensors(ours_path, final)),
             ""),
    ]
    for path in (ours_path, f16, final):
        path.unlink(missing_ok=True)
    return rows


# ------------------------------------------------------------------------------------ 3. the menu, demo base

# One llama.cpp thread for the menu's KLD and tg: its thread pool spin-waits, and on a shared box two threads
# measured 2-87 tok/s for the same F16 file; one thread gives figures comparable across types.
EVAL_THREADS = 1
DEMO_BASE = ROOT / ".cache" / "demo" / "base"
DEMO_DATA = ROOT / ".cache" / "demo" / "data"


def _chatml(conversation: dict) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conversation["messages"])


def _bits_per_weight(path: Path) -> float:
    from runtime.quant_sweep import model_facts

    return model_facts(path)["bits_per_weight"]


def menu_table(results: list[dict]) -> str:
    lines = ["| type | imatrix | size MB | bits/weight | mean KLD | top-1 % | tg tok/s (1 thread) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.get("refused"):
            lines.append(f"| {r['type']} | {r['imatrix']} | refused: needs an imatrix | | | | |")
            continue
        lines.append(f"| {r['type']} | {r['imatrix']} | {r['size_mb']:.2f} | {r['bpw']:.2f} | {r['kld']:.4f} | "
                     f"{r['top1']:.1f} | {r['tg']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_kld_vs_bpw(results: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from convert.common.fsutil import atomic_file

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for label, marker in (("without", "o"), ("with", "^")):
        # the float types are the lossless end (and would squeeze the quants into a corner): quantized types only
        points = [r for r in results if r["imatrix"] == label and not r.get("refused") and 0 < r["kld"] and r["bpw"] < 9]
        ax.scatter([r["bpw"] for r in points], [r["kld"] for r in points], marker=marker, label=f"{label} imatrix")
        for r in points:
            ax.annotate(r["type"], (r["bpw"], r["kld"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("linear")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (whole file's tensors)")
    ax.set_ylabel("mean KLD vs F16 (nats, held-out conversations)")
    ax.set_title("edgeft quant menu on the demo base")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return out


def menu_rows(work: Path, types: list[str] | None = None) -> list[dict]:
    """Every type (or `types`), without and with the imatrix of the demo's training data, on the demo base."""
    from convert import convert_model
    from convert.quant import FILE_TYPES
    from convert.common.jsonl import read_conversations
    from convert.common.errors import EdgeftError
    from edgeft.imatrix import compute_imatrix
    from runtime.kld import compare
    from runtime.throughput import measure

    if not (DEMO_BASE / "config.json").is_file() or not (DEMO_DATA / "train.jsonl").is_file():
        return [_row("demo base or data missing (make release builds them): no menu rows", 0, "")]
    out = work / "menu"
    out.mkdir(exist_ok=True)
    imatrix = out / "demo-train-imatrix.gguf"
    if not imatrix.is_file():
        compute_imatrix(DEMO_BASE, DEMO_DATA / "train.jsonl", imatrix, max_examples=256, threads=THREADS)
    texts = [_chatml(c) for c in read_conversations(DEMO_DATA / "eval.jsonl")]
    f16 = convert_model(DEMO_BASE, out / "demo-F16.gguf", outtype="f16")
    results = []
    for name in types or FILE_TYPES:
        for label, matrix in (("without", None), ("with", imatrix)):
            path = out / f"demo-{name}-{label}.gguf"
            try:
                convert_model(DEMO_BASE, path, outtype=name, imatrix=matrix, threads=THREADS)
            except EdgeftError:
                results.append({"type": name, "imatrix": label, "refused": True})
                continue
            quality = compare(path, f16, texts, n_ctx=512, max_tokens=1500, threads=EVAL_THREADS)
            speed = measure(path, n_prompt=0, n_gen=32, threads=EVAL_THREADS, repeat=2, isolate=False)
            results.append({"type": name, "imatrix": label, "size_mb": path.stat().st_size / 1e6,
                            "bpw": _bits_per_weight(path), "kld": quality["kld_mean"],
                            "top1": quality["top1_agreement"], "tg": speed["tg_tok_s"]})
            path.unlink()
        # written as it goes: a long run that is stopped still leaves its table
        (work / "menu.md").write_text(menu_table(results))
        (work / "menu.json").write_text(json.dumps(results, indent=1))
    table = menu_table(results)
    png = plot_kld_vs_bpw(results, work / "menu-kld-vs-bpw.png")
    print(table)
    rows = []
    for r in results:
        tag = f"demo {r['type']} ({r['imatrix']} imatrix)"
        if r.get("refused"):
            rows.append(_row(f"{tag}: refused, needs an imatrix", 0, ""))
            continue
        rows += [_row(f"{tag} size", r["size_mb"], "MB"), _row(f"{tag} bits/weight", r["bpw"], "bpw"),
                 _row(f"{tag} mean KLD vs F16", r["kld"], "nats"), _row(f"{tag} top-1 vs F16", r["top1"], "%"),
                 _row(f"{tag} tg (1 thread)", r["tg"], "tok/s")]
    rows.append(_row(f"menu table {work / 'menu.md'}, plot {png}", len(results), "rows"))
    return rows
