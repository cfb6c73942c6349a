"""The strongest reference there is: llama.cpp's own quantizer, `llama_model_quantize` (the function behind
llama-quantize) in the libllama that llama-cpp-python installs, run on the same F32 fixture GGUFs. Our output must
have the same type for every tensor and the same bytes — without and with an imatrix — for every file type of the
menu, and we refuse exactly where llama.cpp refuses (i-quants that need an imatrix, without one).

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
from convert.common.errors import EdgeftError
from tests.convert_helpers import assert_same_tensor_data
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


def llama_quantize(lib, src: Path, dst: Path, ftype: int, importance: dict[str, np.ndarray] | None = None, *,
                   check: bool = True):
    """llama_model_quantize(src -> dst); returns dst, or with check=False its return code (non-zero: refused)."""
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
    code = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if not check:
        return code
    assert code == 0
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


# Every architecture at both widths, plus tied embeddings (qwen2-tied; gemma2 always ties) and 4 query heads per
# KV head (llama-gqa4: the i-quants' and Q2_K's attn_v rules switch at n_gqa >= 4).
MODELS = {
    **{f"{arch}-{width}": (arch, width == "aligned", False, {})
       for arch in ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2") for width in ("aligned", "odd")},
    "qwen2-tied": ("qwen2", True, True, {}),
    "llama-gqa4": ("llama", True, False, {"num_key_value_heads": 1}),
}
# The original menu: every model. The whole menu: two architectures (llama untied, gemma2 tied) at both widths. The
# other models: a representative of each new family too — the legacy 32-blocks, the 4-bit non-linear, the 3-bit
# mix, the 2-bit mix that needs an imatrix, the ternary type. llama-gqa4: the types with an n_gqa rule.
ORIGINAL = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K")
REPRESENTATIVE = ("Q5_0", "Q4_1", "IQ4_XS", "IQ3_M", "IQ2_M", "TQ1_0")
ALL_TYPES_ON = ("llama-aligned", "llama-odd", "gemma2-aligned", "gemma2-odd")
GQA_TYPES = ("Q2_K", "Q2_K_S", "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XS", "IQ3_XXS", "IQ3_M", "IQ2_M", "IQ2_S", "IQ2_XS",
             "IQ2_XXS", "IQ1_M", "IQ1_S")


def types_for(model: str) -> list[str]:
    if model in ALL_TYPES_ON:
        return list(FILE_TYPES)
    if model == "llama-gqa4":
        return list(GQA_TYPES)
    return [*ORIGINAL, *REPRESENTATIVE]


def synthetic_imatrix(source: Path, path: Path) -> Path:
    """An imatrix for the block weights of `source`, with widely spread importances (so every type notices)."""
    rng = np.random.default_rng(0)
    sums, counts = {}, {}
    for tensor in GGUFReader(source).tensors:
        if tensor.name.startswith("blk.") and tensor.name.endswith(".weight") and len(tensor.shape) == 2:
            sums[tensor.name] = rng.uniform(0.1, 40, (1, int(tensor.shape[0]))).astype(np.float32)
            counts[tensor.name] = np.array([7.0], np.float32)
    return write_imatrix(path, ImatrixData(sums, counts, ["calib.jsonl"], 1, 7))


@pytest.fixture(scope="module")
def f32_models(tmp_path_factory):
    work = tmp_path_factory.mktemp("quant-ref")
    return {key: convert_model(build_model(arch, aligned=aligned, tie=tie, **overrides), work / f"{key}.gguf",
                               outtype="f32")
            for key, (arch, aligned, tie, overrides) in MODELS.items()}


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("model", list(MODELS))
def test_same_types_and_bytes_as_llama_quantize(libllama, f32_models, tmp_path, model, use_imatrix):
    source = f32_models[model]
    imatrix = synthetic_imatrix(source, tmp_path / "im.gguf") if use_imatrix else None
    importance = load_imatrix(imatrix) if imatrix else None
    for name in types_for(model):
        file_type = FILE_TYPES[name]
        ours, theirs = tmp_path / f"ours-{name}.gguf", tmp_path / f"ref-{name}.gguf"
        try:
            quantize_gguf(source, ours, file_type, imatrix=imatrix, threads=2)
        except EdgeftError as refused:
            # only where llama.cpp refuses too: a tensor type that needs an importance matrix, without one
            assert not use_imatrix and "--imatrix auto" in str(refused) and "\n" not in str(refused), name
            assert not ours.exists()
            assert llama_quantize(libllama, source, theirs, int(file_type.gguf_file_type), check=False) != 0, name
            continue
        llama_quantize(libllama, source, theirs, int(file_type.gguf_file_type), importance)
        assert_same_tensors(ours, theirs)
        ours.unlink()
        theirs.unlink()


def test_same_bytes_with_our_own_imatrix(libllama, f32_models, tmp_path):
    """An imatrix computed by `edgeft imatrix` changes the i-quant outputs exactly as llama.cpp changes them when
    fed the same matrix — through the one streaming pass from HF too."""
    import json

    from edgeft.imatrix import compute_imatrix
    from tests import corpus

    calib = tmp_path / "calib.jsonl"
    text = corpus.training_text(lines=16, seed=7)
    calib.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                             + "\n" for q, a in zip(text[0::2], text[1::2])))
    model_dir = build_model("llama", aligned=True)
    imatrix = compute_imatrix(model_dir, calib, tmp_path / "ours-imatrix.gguf", threads=2)
    source = f32_models["llama-aligned"]
    for name in ("IQ4_XS", "IQ3_S", "IQ2_XS"):
        file_type = FILE_TYPES[name]
        theirs = llama_quantize(libllama, source, tmp_path / f"ref-{name}.gguf", int(file_type.gguf_file_type),
                                load_imatrix(imatrix))
        assert_same_tensors(quantize_gguf(source, tmp_path / f"ours-{name}.gguf", file_type, imatrix=imatrix), theirs)
        assert_same_tensor_data(convert_model(model_dir, tmp_path / f"one-{name}.gguf", outtype=name, imatrix=imatrix),
                                theirs)
        if name != "IQ2_XS":  # these are allowed without one: the imatrix must have changed the bytes
            plain = {t.name: t for t in GGUFReader(quantize_gguf(source, tmp_path / f"plain-{name}.gguf", file_type)).tensors}
            changed = [t.name for t in GGUFReader(theirs).tensors
                       if not np.array_equal(np.asarray(t.data), np.asarray(plain[t.name].data))]
            assert "blk.0.attn_q.weight" in changed and "blk.1.ffn_up.weight" in changed, name


@pytest.fixture(scope="module")
def l80_f32(tmp_path_factory):
    # 80 layers with GQA is llama.cpp's "70B" type (attn_v bump), and long enough for every layer-position rule
    # (use_more_bits' thirds, Q3_K_M's first sixteenth of ffn_down) to show.
    model = build_model("llama", aligned=True, num_hidden_layers=80, intermediate_size=256)
    return convert_model(model, tmp_path_factory.mktemp("l80") / "l80.gguf", outtype="f32")


# The cheap types whose rules look at the layer position or the "70B" bump (Q3_K_S: Q3_K attn_v -> Q5_K; Q5_0 with
# an imatrix: first eighth of ffn_down Q5_1); the i-quants' position rules are covered by test_quant_policy.
@pytest.mark.parametrize("ftype,use_imatrix", [("Q4_K_M", False), ("Q3_K_M", False), ("Q3_K_S", False),
                                               ("Q3_K_L", False), ("Q5_0", True)])
def test_80_layer_model(libllama, l80_f32, tmp_path, ftype, use_imatrix):
    file_type = FILE_TYPES[ftype]
    imatrix = synthetic_imatrix(l80_f32, tmp_path / "im.gguf") if use_imatrix else None
    ours = quantize_gguf(l80_f32, tmp_path / "ours.gguf", file_type, imatrix=imatrix, threads=2)
    theirs = llama_quantize(libllama, l80_f32, tmp_path / "ref.gguf", int(file_type.gguf_file_type),
                            load_imatrix(imatrix) if imatrix else None)
    assert_same_tensors(ours, theirs)
