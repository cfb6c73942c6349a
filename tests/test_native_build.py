"""The llama.cpp build flags chosen from recorded /proc/cpuinfo texts, the installed build itself, and the probe
that turns a native crash into one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from convert.common.errors import EdgeftError
from edgeft.native_build import build_key, cmake_args, cpu_flags

# First-processor blocks as the kernel prints them (trimmed to the lines that matter).
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt avx f16c rdrand bmi1 avx2 bmi2 avx512f \
avx512dq avx512ifma avx512cd avx512bw avx512vl avx_vnni avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni \
avx512_bitalg avx512_vpopcntdq amx_bf16 avx512_fp16 amx_tile amx_int8

processor\t: 1
flags\t\t: fpu sse sse2
"""
ZEN4 = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f avx512dq avx512ifma avx512cd \
avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq
"""
AVX2_LAPTOP = """processor\t: 0
model name\t: Intel(R) Core(TM) i7-8565U
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2
"""
AVX512F_ONLY_PARTS = """flags\t\t: sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd
"""
GRAVITON = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
"""


def _options(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args)


def test_flags_of_the_first_processor():
    assert "amx_int8" in cpu_flags(SAPPHIRE_RAPIDS)
    assert "asimd" in cpu_flags(GRAVITON)
    assert cpu_flags("") == set()


def test_amx_host_gets_everything_but_amx():
    options = _options(cmake_args(SAPPHIRE_RAPIDS, "x86_64"))
    assert options["GGML_NATIVE"] == "OFF"
    for on in ("GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_AVX512", "GGML_AVX512_VBMI",
               "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AVX_VNNI", "GGML_BMI2", "GGML_SSE42"):
        assert options[on] == "ON", on
    assert options["GGML_AMX_TILE"] == options["GGML_AMX_INT8"] == options["GGML_AMX_BF16"] == "OFF"


def test_amx_only_when_asked_and_only_when_present():
    assert _options(cmake_args(SAPPHIRE_RAPIDS, "x86_64", amx=True))["GGML_AMX_INT8"] == "ON"
    assert _options(cmake_args(ZEN4, "x86_64", amx=True))["GGML_AMX_INT8"] == "OFF"


def test_avx512_bf16_without_amx():
    options = _options(cmake_args(ZEN4, "x86_64"))
    assert options["GGML_AVX512"] == options["GGML_AVX512_BF16"] == "ON"
    assert options["GGML_AVX_VNNI"] == "OFF"


def test_avx2_laptop_gets_no_avx512():
    options = _options(cmake_args(AVX2_LAPTOP, "x86_64"))
    assert options["GGML_AVX2"] == options["GGML_FMA"] == "ON"
    assert all(options[k] == "OFF" for k in options if k.startswith(("GGML_AVX512", "GGML_AMX")))


def test_avx512_needs_all_five_parts_ggml_compiles_with():
    assert _options(cmake_args(AVX512F_ONLY_PARTS, "x86_64"))["GGML_AVX512"] == "OFF"


def test_non_x86_keeps_llama_cpp_defaults():
    assert cmake_args(GRAVITON, "aarch64") == []


def test_wheel_cache_key_changes_with_flags_and_version():
    a = " ".join(cmake_args(SAPPHIRE_RAPIDS, "x86_64"))
    b = " ".join(cmake_args(SAPPHIRE_RAPIDS, "x86_64", amx=True))
    assert build_key(a, "0.3.36") == build_key(a, "0.3.36")
    assert len({build_key(a, "0.3.36"), build_key(b, "0.3.36"), build_key(a, "0.3.37")}) == 3


def _recorded_args() -> str:
    recorded = Path(sys.prefix) / "llama-cmake-args.txt"
    if not recorded.is_file():
        pytest.skip(f"{recorded} missing: llama-cpp-python was not installed by `make install`")
    return recorded.read_text()


def test_installed_llama_cpp_has_no_amx_unless_opted_in():
    llama_cpp = pytest.importorskip("llama_cpp")
    opted_in = "GGML_AMX_INT8=ON" in _recorded_args() or "GGML_NATIVE=ON" in _recorded_args()
    system_info = llama_cpp.llama_print_system_info().decode()
    lib = Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"
    # amx.cpp's own message is compiled in only with its matmul (ggml-cpu/amx/amx.cpp).
    has_amx_kernels = b"AMX is not ready to be used" in lib.read_bytes()
    if opted_in:
        pytest.skip("this build opted into AMX (LLAMA_AMX=1 or LLAMA_CMAKE_ARGS)")
    assert "AMX_INT8 = 1" not in system_info, system_info
    assert not has_amx_kernels


def test_probe_passes_a_real_file_and_remembers_it(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from runtime import native_probe
    from tests.convert_helpers import converted

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(native_probe, "_passed", set())
    gguf = converted("llama", "q8_0")
    native_probe.ensure_decodes(gguf)
    cache = (tmp_path / "cache" / "edgeft" / "native-decode.json").read_text()
    assert "Q8_0" in cache
    # A second call is answered by the cache: a child that would crash is never started.
    monkeypatch.setattr(native_probe, "_passed", set())
    monkeypatch.setattr(native_probe, "CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    native_probe.ensure_decodes(gguf)


def test_a_native_crash_becomes_one_line(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from runtime import native_probe
    from tests.convert_helpers import converted

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(native_probe, "_passed", set())
    gguf = converted("llama", "q8_0")
    # What a faulting AMX tile load does to the child: SIGILL.
    monkeypatch.setattr(native_probe, "CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    from runtime.load import open_gguf

    with pytest.raises(EdgeftError) as caught:
        open_gguf(gguf, n_ctx=64)
    message = str(caught.value)
    assert "\n" not in message
    assert "SIGILL" in message and "Q8_0" in message and "make install-llama" in message
    assert not (tmp_path / "cache" / "edgeft" / "native-decode.json").exists()  # a crash is never cached
    assert os.path.exists(gguf)
