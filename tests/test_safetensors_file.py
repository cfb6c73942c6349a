"""convert/safetensors_file.py: the streaming writer and the row reads, against the safetensors library."""

from __future__ import annotations

import numpy as np
import pytest

def test_stream_writer_and_row_reads_agree_with_safetensors(tmp_path):
    from safetensors.numpy import load_file, save_file

    from convert.safetensors_file import SafetensorsFile, SafetensorsStreamWriter

    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((7, 5)).astype(np.float32), "b": np.arange(6, dtype=np.int64),
               "c": rng.standard_normal((3, 2, 4)).astype(np.float16), "empty": np.zeros((0, 3), np.float32)}
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}
    specs = [(name, dtypes[array.dtype], array.shape) for name, array in tensors.items()]
    with SafetensorsStreamWriter(tmp_path / "s.safetensors", specs) as writer:
        for name, array in tensors.items():
            for start in range(0, array.shape[0], 2):  # several writes per tensor, as the merge does
                writer.write(name, array[start:start + 2].tobytes())
            if array.shape[0] == 0:
                writer.write(name, b"")
    loaded = load_file(str(tmp_path / "s.safetensors"))
    assert all(np.array_equal(loaded[name], array) for name, array in tensors.items())

    save_file(tensors, str(tmp_path / "ref.safetensors"))
    reference = SafetensorsFile(tmp_path / "ref.safetensors")
    assert np.array_equal(reference.read_rows("a", 2, 5), tensors["a"][2:5])
    assert np.array_equal(reference.read_rows("c", 1, 3), tensors["c"][1:3].astype(np.float32))

    with pytest.raises(RuntimeError, match="before tensor a was complete"):
        with SafetensorsStreamWriter(tmp_path / "short.safetensors", specs) as writer:
            writer.write("a", tensors["a"][:3].tobytes())
            writer.close()
