"""Fixtures for `edgeft serve` tests and the bench: a tiny base GGUF with LoRA adapter GGUFs, a server process.

Adapters are peft adapters with random non-zero factors (tests/test_merge.make_adapter) scaled up by a large alpha,
so each one moves greedy decoding far from the base's and from the others': a server that applied the wrong
adapter, or none, would produce other tokens.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build_fleet(n_adapters: int = 2, *, arch: str = "qwen2", aligned: bool = False, outtype: str = "f16",
                r: int = 8) -> dict:
    """{"base": Path, "adapters": {"a1": Path, ...}}, cached like the factory's models."""
    from tests.factory import _cached, build_model

    base_dir = build_model(arch, aligned=aligned)
    params = {"arch": arch, "aligned": aligned, "outtype": outtype, "r": r, "n": n_adapters,
              "helper": _helper_hash()}

    def build(out: Path) -> None:
        from convert import convert_model
        from convert.lora import convert_lora
        from tests.test_merge import make_adapter

        convert_model(base_dir, out / "base.gguf", outtype=outtype)
        for index in range(1, n_adapters + 1):
            adapter, _, _ = make_adapter(base_dir, out / f"peft-a{index}", seed=10 + index, r=r, lora_alpha=8 * r)
            convert_lora(adapter, out / f"a{index}.gguf", base_dir=base_dir)

    folder = _cached("serve-fleet", params, build)
    return {"base": folder / "base.gguf",
            "adapters": {f"a{i}": folder / f"a{i}.gguf" for i in range(1, n_adapters + 1)}}


def greedy_tokens(llm, tokens, max_tokens):
    """The reference answer: llama-cpp-python's own greedy decode of `tokens` from a fresh cache, up to the end of
    generation (make the Llama with flash_attn=True, as llama-server and edgeft's decoder run)."""
    from runtime.generate import is_end_of_generation

    llm.reset()
    generated = []
    for token in llm.generate(tokens, temp=0.0, reset=False):
        if is_end_of_generation(llm, token) or len(generated) == max_tokens:
            break
        generated.append(token)
    return generated


def _helper_hash() -> str:
    import hashlib

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


class ServerProcess:
    """`edgeft serve` in a child process on 127.0.0.1 with a port the OS picks (read back from its banner)."""

    def __init__(self, base: Path, adapters: dict[str, Path], *, extra: list[str] = (), timeout: float = 120):
        command = [sys.executable, "-m", "edgeft", "serve", str(base), "--host", "127.0.0.1", "--port", "0",
                   "--name", "base", *[f"--adapter={name}={path}" for name, path in adapters.items()], *extra]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        env=env, cwd=ROOT)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.1, remaining))
            except queue.Empty:
                line = None
            if line is not None:
                match = re.search(r"on http://127\.0\.0\.1:(\d+)/v1", line)
                if match:
                    self.port = int(match.group(1))
                    break
            if self.process.poll() is not None or remaining <= 0:
                self.stop()
                raise RuntimeError("edgeft serve did not start:\n" + "".join(self.stderr))
        self.url = f"http://127.0.0.1:{self.port}"

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


def raw_request(url: str, path: str, *, body: bytes | None = None, headers: dict | None = None,
                method: str | None = None, timeout: float = 60) -> tuple[int, dict]:
    """(status, JSON body) of one HTTP request, errors included, without any client library's retries."""
    request = urllib.request.Request(url + path, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


# ---- the serve tests' fleet and their reference: llama-cpp-python with one adapter at a time -------------------

N_CTX = 512
MAX_TOKENS = 24
CHATS = [
    [{"role": "user", "content": "List the users who joined in 2024."}],
    [{"role": "system", "content": "You write SQL."}, {"role": "user", "content": "Count the orders per day."}],
    [{"role": "user", "content": "Hello there, how are you today?"}],
]
PROMPTS = ["SELECT name FROM users WHERE", "The weather in Paris is", "def add(a, b):"]


@pytest.fixture(scope="module")
def fleet():
    return build_fleet(2, outtype="f32")


class Reference:
    """llama-cpp-python, one Llama per adapter (lora_path), greedy, fresh cache per prompt; results cached."""

    def __init__(self, fleet):
        self.paths = {"base": None, **fleet["adapters"]}
        self.base = fleet["base"]
        self.models = {}
        self.results = {}
        self.lock = threading.Lock()

    def _llm(self, name):
        import llama_cpp

        if name not in self.models:
            kwargs = {"lora_path": str(self.paths[name])} if self.paths[name] else {}
            # flash attention as llama-server (and so edgeft's decoder) chooses it on a CPU
            self.models[name] = llama_cpp.Llama(model_path=str(self.base), n_ctx=N_CTX, n_threads=1, verbose=False,
                                                flash_attn=True, **kwargs)
        return self.models[name]

    def answer(self, name, *, messages=None, prompt=None, max_tokens=MAX_TOKENS):
        from runtime.generate import detokenize, prompt_tokens, render_chat

        key = (name, json.dumps(messages), prompt, max_tokens)
        with self.lock:
            if key not in self.results:
                llm = self._llm(name)
                if messages is not None:
                    tokens = prompt_tokens(llm, render_chat(llm, messages))
                else:  # what create_completion feeds the model for a text prompt
                    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
                generated = greedy_tokens(llm, tokens, max_tokens)
                self.results[key] = (detokenize(llm, generated), len(generated))
            return self.results[key]

    def close(self):
        for llm in self.models.values():
            llm.close()


@pytest.fixture(scope="module")
def reference(fleet):
    ref = Reference(fleet)
    yield ref
    ref.close()
