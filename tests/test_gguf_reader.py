"""convert/gguf_reader.py: a path that is no GGUF gets the reader's one line on every path that opens a GGUF."""

from __future__ import annotations

import pytest

from tests.hostile import invoke, one_line_error
from tests.train_helpers import toy_data

# A path that is no GGUF: runtime.check_gguf (eval, serve, chat) had its own wording on top of the reader's
# ('bad magic' vs 'starts with ...; a Hugging Face checkpoint'); both now show convert.gguf_reader's one line.
NOT_GGUF = [
    ("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b"\0" * 64, "a safetensors checkpoint: convert"),
    ("pytorch_model.bin", b"PK\x03\x04" + b"\0" * 64, "a PyTorch checkpoint: convert"),
    ("model.gguf", b"\0" * 64, r"starts with b'\x00\x00\x00\x00', expected b'GGUF'); pass a .gguf made by"),
    ("empty.gguf", b"", "not a GGUF file (the file is empty)"),
    ("folder", None, "is a folder, not a GGUF file; a Hugging Face model folder converts with `edgeft convert"),
    ("absent.gguf", "absent", "no such file; pass the path of a .gguf file"),
]


@pytest.mark.hostile
@pytest.mark.parametrize("name, content, needle", NOT_GGUF)
def test_a_file_that_is_not_a_gguf_gets_one_message_on_every_path(tmp_path, name, content, needle):
    from convert.gguf_reader import GGUFFile
    from convert.common.errors import EdgeftError
    from runtime.load import check_gguf

    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    lines = []
    for read in (check_gguf, GGUFFile):
        with pytest.raises(EdgeftError) as error:
            read(path)
        lines.append(str(error.value))
    assert lines[0] == lines[1] and needle in lines[0], lines
    if content is not None:  # click itself refuses a folder as eval's MODEL
        _, evals = toy_data(tmp_path / "data")
        result = invoke("eval", path, "--data", evals, "-o", tmp_path / "out")
        assert one_line_error(result, needle) == f"Error: {lines[0]}"
