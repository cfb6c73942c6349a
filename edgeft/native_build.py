"""Choose the CMake flags llama-cpp-python is built with, from the CPU it is built on.

Why not GGML_NATIVE: `-march=native` on a CPU that advertises AMX makes ggml compile its AMX matmul and route
Q4_0/Q8_0/K-quant weights through it, and on some cloud VMs the tile instructions fault (SIGILL at `tileloadd` in
`ggml_backend_amx_mul_mat`) although CPUID, XSAVE and `arch_prctl(ARCH_REQ_XCOMP_PERM)` all say yes. So we turn
native off and name every instruction set the host reports, except AMX, which a user opts into with
`LLAMA_AMX=1` (or replaces everything with `LLAMA_CMAKE_ARGS=...`).

Stdlib only: the Makefile runs this file as a script before anything is installed.
    python3 edgeft/native_build.py                # print the flags for this machine
    python3 edgeft/native_build.py --amx          # the same, with AMX
    python3 edgeft/native_build.py --cpuinfo FILE # for a recorded /proc/cpuinfo
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from pathlib import Path

# ggml option -> the /proc/cpuinfo flags that must all be present. GGML_AVX512 compiles with
# -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw (ggml-cpu/CMakeLists.txt), so it needs all five.
X86_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
# Opt-in only (see the module docstring).
AMX_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_AMX_TILE": ("amx_tile",),
    "GGML_AMX_INT8": ("amx_int8",),
    "GGML_AMX_BF16": ("amx_bf16",),
}
X86_MACHINES = {"x86_64", "amd64", "i686", "i386"}


def cpu_flags(cpuinfo_text: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text (x86 says `flags`, ARM says `Features`)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cmake_args(cpuinfo_text: str, machine: str, amx: bool = False) -> list[str]:
    """`-D` options for llama.cpp's CMake build. Non-x86 hosts keep llama.cpp's defaults (the AMX fault is x86's)."""
    if machine.lower() not in X86_MACHINES:
        return []
    flags = cpu_flags(cpuinfo_text)
    table = dict(X86_OPTIONS)
    if amx:
        table.update(AMX_OPTIONS)
    args = ["-DGGML_NATIVE=OFF"]
    for option, needs in table.items():
        args.append(f"-D{option}={'ON' if all(f in flags for f in needs) else 'OFF'}")
    if not amx:
        args += [f"-D{option}=OFF" for option in AMX_OPTIONS]
    return args


def build_key(args: str, version: str) -> str:
    """A short name for one (llama-cpp-python version, flags) build, for our wheel cache: pip's own cache keys
    wheels by sdist only and would hand back a wheel built with other flags."""
    return hashlib.sha256(f"{version}\n{args}".encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpuinfo", default="/proc/cpuinfo", help="a /proc/cpuinfo text (default: this machine's)")
    parser.add_argument("--machine", default=platform.machine(), help="uname -m (default: this machine's)")
    parser.add_argument("--amx", action="store_true", help="also compile ggml's AMX kernels")
    parser.add_argument("--key", metavar="VERSION", help="print the wheel-cache key of CMAKE_ARGS from stdin")
    ns = parser.parse_args(argv)
    if ns.key:
        print(build_key(sys.stdin.read().strip(), ns.key))
        return 0
    try:
        text = Path(ns.cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""  # no /proc (macOS): llama.cpp's defaults
    print(" ".join(cmake_args(text, ns.machine, ns.amx)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
