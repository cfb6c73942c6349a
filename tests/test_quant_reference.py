"""The strongest reference there is: llama.cpp's own quantizer, `llama_model_quantize` (the function behind
llama-quantize) in the libllama that llama-cpp-python installs, run on the same F32 fixture GGUFs. Our output must
have the same type for every tensor and the same bytes — without and with an imatrix.

The params struct is declared here from llama.h of llama-cpp-python 0.3.36's vendored llama.cpp; if the library's
defaults do not read back as expected (another layout), the test skips instead of guessing.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from convert import convert_model
from convert.quant import FILE_TYPES, load_imatrix
from convert.quant.gguf_io import quantize_gguf
from convert.quant.imatrix_file import ImatrixData, write_imatrix
from tests.factory import build_model

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")


class ImatrixEntry(ctypes.Structure):  # struct llama_model_imatrix_data
    _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.POINTER(ctypes.c_float)), ("size", ctypes.c_size_t)]


class QuantizeParams(ctypes.Structure):  # struct llama_model_quantize_params
    _fields_ = [
        ("nthread", ctypes.c_int32), ("ftype", ctypes.c_int), ("output_tensor_type", ctypes.c_int),
        ("token_embedding_type", ctypes.c_int), ("allow_requantize", ctypes.c_bool),
        ("quantize_output_tensor", ctypes.c_bool), ("only_copy", ctypes.c_bool), ("pure", ctypes.c_bool),
        ("keep_split", ctypes.c_bool), ("dry_run", ctypes.c_bool), ("imatrix", ctypes.POINTER(ImatrixEntry)),
        ("kv_overrides", ctypes.c_void_p), ("tt_overrides", ctypes.c_void_p), ("prune_layers", ctypes.c_void_p),
        ("max_buf_size", ctypes.c_size_t),
    ]


@pytest.fixture(scope="module")
def libllama():
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libllama.*"))
    if not candidates:
        pytest.skip("libllama not found beside llama_cpp")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.llama_model_quantize_default_params.restype = QuantizeParams
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantizeParams)]
    lib.llama_model_quantize.restype = ctypes.c_uint32
    defaults = lib.llama_model_quantize_default_params()
    if not (defaults.ftype == 7 and defaults.quantize_output_tensor and not defaults.pure
            and defaults.max_buf_size == 8 * 1024**3):
        pytest.skip("llama_model_quantize_params layout differs from the one declared here")
    return lib


def llama_quantize(lib, src: Path, dst: Path, ftype: int, importance: dict[str, np.ndarray] | None = None) -> Path:
    params = lib.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, 2
    keep = []
    if importance:
        entries = (ImatrixEntry * (len(importance) + 1))()
        for i, (name, values) in enumerate(sorted(importance.items())):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(values)
            entries[i] = ImatrixEntry(name.encode(), values.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), values.size)
        entries[len(importance)] = ImatrixEntry(None, None, 0)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(ImatrixEntry))
        keep.append(entries)
    assert lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    return dst


def assert_same_tensors(ours: Path, theirs: Path) -> None:
    """Same tensor types and bytes — and, since KV and tensor order follow llama-quantize's, the same file."""
    mine = {t.name: t for t in GGUFReader(ours).tensors}
    ref = {t.name: t for t in GGUFReader(theirs).tensors}
    assert set(mine) == set(ref)
    wrong_type = {n: (mine[n].tensor_type.name, ref[n].tensor_type.name) for n in ref
                  if mine[n].tensor_type != ref[n].tensor_type}
    assert not wrong_type, wrong_type
    wrong_bytes = [n for n in ref if not np.array_equal(np.asarray(mine[n].data).view(np.uint8),
                                                        np.asarray(ref[n].data).view(np.uint8))]
    assert not wrong_bytes, wrong_bytes
    assert ours.read_bytes() == theirs.read_bytes(), "tensors equal but the files differ (header or order)"


@pytest.fixture(scope="module")
def f32_models(tmp_path_factory):
    work = tmp_path_factory.mktemp("quant-ref")
    specs = {"llama-aligned": ("llama", True, False), "llama-odd": ("llama", False, False),
             "qwen2-tied": ("qwen2", True, True), "phi3-odd": ("phi3", False, False),
             "phi3-aligned": ("phi3", True, False), "gemma2-aligned": ("gemma2", True, False),
             "qwen3-odd": ("qwen3", False, False), "mistral-aligned": ("mistral", True, False)}
    return {key: convert_model(build_model(arch, aligned=aligned, tie=tie), work / f"{key}.gguf", outtype="f32")
            for key, (arch, aligned, tie) in specs.items()}


@pytest.mark.parametrize("model", ["llama-aligned", "llama-odd", "qwen2-tied", "phi3-odd", "phi3-aligned",
                                   "gemma2-aligned", "qwen3-odd", "mistral-aligned"])
def test_same_types_and_bytes_as_llama_quantize(libllama, f32_models, tmp_path, model):
    for name, file_type in FILE_TYPES.items():
        ours = quantize_gguf(f32_models[model], tmp_path / f"ours-{name}.gguf", file_type, threads=2)
        theirs = llama_quantize(libllama, f32_models[model], tmp_path / f"ref-{name}.gguf", int(file_type.gguf_file_type))
        assert_same_tensors(ours, theirs)


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q2_K", "Q4_0"])
def test_same_bytes_with_an_imatrix(libllama, f32_models, tmp_path, ftype):
    source = f32_models["llama-aligned"]
    rng = np.random.default_rng(0)
    sums, counts = {}, {}
    for tensor in GGUFReader(source).tensors:
        if tensor.name.startswith("blk.") and tensor.name.endswith(".weight") and len(tensor.shape) == 2:
            sums[tensor.name] = rng.uniform(0.1, 40, (1, int(tensor.shape[0]))).astype(np.float32)
            counts[tensor.name] = np.array([7.0], np.float32)
    path = write_imatrix(tmp_path / "im.gguf", ImatrixData(sums, counts, ["calib.jsonl"], 1, 7))
    file_type = FILE_TYPES[ftype]
    ours = quantize_gguf(source, tmp_path / "ours.gguf", file_type, imatrix=path, threads=2)
    theirs = llama_quantize(libllama, source, tmp_path / "ref.gguf", int(file_type.gguf_file_type), load_imatrix(path))
    assert_same_tensors(ours, theirs)


@pytest.fixture(scope="module")
def l80_f32(tmp_path_factory):
    # 80 layers with GQA is llama.cpp's "70B" type (attn_v bump), and long enough for every layer-position rule
    # (use_more_bits' thirds, Q3_K_M's first sixteenth of ffn_down) to show.
    model = build_model("llama", aligned=True, num_hidden_layers=80, intermediate_size=256)
    return convert_model(model, tmp_path_factory.mktemp("l80") / "l80.gguf", outtype="f32")


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q3_K_M"])
def test_80_layer_model(libllama, l80_f32, tmp_path, ftype):
    file_type = FILE_TYPES[ftype]
    ours = quantize_gguf(l80_f32, tmp_path / "ours.gguf", file_type, threads=2)
    assert_same_tensors(ours, llama_quantize(libllama, l80_f32, tmp_path / "ref.gguf", int(file_type.gguf_file_type)))
