"""Serve benchmark: `edgeft serve` memory with many adapters over one base, and what an adapter switch costs.

Target: the resident memory of a server with 8 adapters loaded (each used once, so its tensors and
the compute buffers are really in memory) ≤ the resident memory of the same server with the base alone + the
adapters' file sizes × 1.5, and still after rounds of switching through all of them (glibc's malloc would let it
creep up; see runtime/serve's _keep_malloc_threshold_fixed). Each server is a fresh child process on 127.0.0.1;
RSS is read from /proc after one request per model and after 4 more rounds. Also reported: the latency of one
short request when every request switches adapter vs when all go to the same one (the switch drops the KV cache,
so the shared prompt prefix is evaluated again).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

N_ADAPTERS = 8
RANK = 64  # all linear layers of the aligned llama fixture: ~2 MiB of f32 factors per adapter
PROMPT = [{"role": "system", "content": "You answer in SQL. " * 8}, {"role": "user", "content": "Count the users."}]


def _row(metric, value, unit, target=None, ok=None):
    return {"bench": "serve", "metric": metric, "value": float(value), "unit": unit, "target": target, "ok": ok}


def _ask(server, model, max_tokens=8):
    from tests.serve_helpers import raw_request

    body = json.dumps({"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}).encode()
    started = time.perf_counter()
    status, answer = raw_request(server.url, "/v1/chat/completions", body=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    if status != 200:
        raise RuntimeError(f"{model}: {status} {answer}")
    return time.perf_counter() - started


def _resident(base: Path, adapters: dict[str, Path], rounds: int = 4) -> tuple[int, int]:
    """RSS after one request per model, and after `rounds` more rounds of switching through all of them."""
    from tests.serve_helpers import ServerProcess, rss_bytes

    server = ServerProcess(base, adapters, extra=["--ctx", "1024", "--threads", "1"])
    try:
        for model in ["base", *adapters]:
            _ask(server, model)
        first = rss_bytes(server.process.pid)
        for _ in range(rounds):
            for model in ["base", *adapters]:
                _ask(server, model)
        return first, rss_bytes(server.process.pid)
    finally:
        if server.stop() != 0:
            raise RuntimeError("edgeft serve did not exit 0:\n" + "".join(server.stderr))


def _latency(base: Path, adapters: dict[str, Path], rounds: int = 6) -> tuple[float, float]:
    from tests.serve_helpers import ServerProcess

    names = list(adapters)
    server = ServerProcess(base, adapters, extra=["--ctx", "1024", "--threads", "1"])
    try:
        _ask(server, names[0])
        same = [_ask(server, names[0]) for _ in range(rounds)]
        switching = [_ask(server, names[i % len(names)]) for i in range(1, rounds + 1)]
        return statistics.median(same), statistics.median(switching)
    finally:
        server.stop()


def run(cache_dir: Path) -> list[dict]:
    from tests.serve_helpers import build_fleet

    fleet = build_fleet(N_ADAPTERS, arch="llama", aligned=True, outtype="f16", r=RANK)
    adapter_bytes = sum(path.stat().st_size for path in fleet["adapters"].values())
    alone, _ = _resident(fleet["base"], {})
    first, loaded = _resident(fleet["base"], fleet["adapters"])
    limit = alone + 1.5 * adapter_bytes
    mib = 1 << 20
    same, switching = _latency(fleet["base"], fleet["adapters"])
    return [
        _row("base GGUF file", fleet["base"].stat().st_size / mib, "MiB"),
        _row(f"{N_ADAPTERS} adapter GGUF files (r={RANK})", adapter_bytes / mib, "MiB"),
        _row("RSS, base alone", alone / mib, "MiB"),
        _row(f"RSS, base + {N_ADAPTERS} adapters, each used once", first / mib, "MiB", f"<= {limit / mib:.1f}",
             first <= limit),
        _row(f"RSS, base + {N_ADAPTERS} adapters, after 4 more rounds", loaded / mib, "MiB",
             f"<= {limit / mib:.1f}", loaded <= limit),
        _row("RSS growth / adapter file bytes", (loaded - alone) / adapter_bytes, "x", "<= 1.5",
             loaded - alone <= 1.5 * adapter_bytes),
        _row("request latency, same adapter (median)", same * 1000, "ms"),
        _row("request latency, switching adapter (median)", switching * 1000, "ms"),
    ]
