"""Decode a GGUF once in a child process before this process does, so a native crash becomes one line.

A llama.cpp build can compile kernels the CPU advertises but faults on (ggml's AMX matmul on some cloud VMs dies
with SIGILL at `tileloadd`), and a signal in our own process would end it with nothing but "Illegal instruction".
The child loads the file and decodes a short batch and one token, which runs the matmul kernels of every tensor
type the file holds. The verdict is cached per (llama.cpp build, set of tensor types): after the first file of a
kind, a process pays nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_file

CHILD = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_batch=64, n_ubatch=64, n_threads=1, n_threads_batch=1,
            verbose=False)
tokens = (llm.tokenize(b"edgeft native decode probe: one two three four five", add_bos=True) * 2)[:24]
llm.eval(tokens)        # a batch: the prompt-processing kernels
llm.eval(tokens[:1])    # one token: the generation kernels
"""
PROBE_TIMEOUT_S = 300
_passed: set[str] = set()  # keys verified in this process


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "edgeft" / "native-decode.json"


def _build_identity() -> str:
    """The installed llama.cpp libraries (path, size, mtime): a rebuild gets a new identity, so new verdicts."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    parts = [str(p) + f":{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(lib_dir.glob("*.so*"))]
    return hashlib.sha256("\n".join(parts or [llama_cpp.__version__]).encode()).hexdigest()[:16]


def tensor_types(path: Path) -> list[str]:
    from convert.gguf_reader import GGUFFile

    gguf_file = GGUFFile(path)
    try:
        return sorted({tensor.qtype.name for tensor in gguf_file.tensors})
    finally:
        gguf_file.close()


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _remember(key: str) -> None:
    _passed.add(key)
    cache = _read_cache()
    cache[key] = "ok"
    try:
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(_cache_file()) as tmp:
            tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
    except (OSError, EdgeftError):
        pass  # an unwritable cache only costs the next process one more probe


def _signal_name(returncode: int) -> str:
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"signal {-returncode}"
    return {signal.SIGILL: "SIGILL, illegal instruction"}.get(sig, sig.name)


def ensure_decodes(path: str | os.PathLike) -> None:
    """Raise one clear line if llama.cpp would crash decoding `path` on this machine; otherwise return quietly."""
    path = Path(path)
    types = tensor_types(path)
    key = f"{_build_identity()}:{','.join(types)}"
    if key in _passed or _read_cache().get(key) == "ok":
        _passed.add(key)
        return
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EdgeftError(f"{path}: llama.cpp did not finish decoding 25 tokens in {PROBE_TIMEOUT_S} s in a probe "
                          "process; check the machine's load and memory") from None
    if proc.returncode < 0:
        raise EdgeftError(
            f"{path}: llama.cpp crashed ({_signal_name(proc.returncode)}) decoding tensor types {', '.join(types)} "
            "with this llama-cpp-python build; rebuild it for this CPU with `make install-llama` (README: "
            "'CPU features'), or choose the flags with `make install-llama LLAMA_CMAKE_ARGS=...`")
    if proc.returncode != 0:
        return  # a Python-level failure: the real load in this process reports it with its own words
    _remember(key)
