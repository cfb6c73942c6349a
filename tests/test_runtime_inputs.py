"""Bad input gives one clear line: GGUF missing/truncated/not a GGUF, eval file invalid. And the torch border."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert.common.errors import EdgeftError
from runtime.examples import baseline_prompt, read_examples, shot_turns
from runtime.load import check_gguf

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_gguf(tmp_path) -> Path:
    import gguf

    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_check_gguf_accepts_a_whole_file(small_gguf):
    assert check_gguf(small_gguf) == small_gguf


def test_tensor_type_differences(small_gguf, tmp_path):
    import gguf

    from runtime.load import tensor_type_differences

    other = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(other), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((64, 64), dtype=np.float16))
    writer.add_tensor("output.weight", np.zeros((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert tensor_type_differences(small_gguf, small_gguf)["same"]
    result = tensor_type_differences(other, small_gguf)
    assert not result["same"] and result["only_in_model"] == ["output.weight"]
    assert result["differing"] == [{"tensor": "token_embd.weight", "model": "F16", "baseline": "F32"}]


def test_missing_gguf(tmp_path):
    with pytest.raises(EdgeftError) as error:
        check_gguf(tmp_path / "absent.gguf")
    assert "no such file" in _one_line(error)


def test_not_a_gguf(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b"\0" * 64)
    with pytest.raises(EdgeftError) as error:
        check_gguf(path)
    assert "not a GGUF file" in _one_line(error)
    with pytest.raises(EdgeftError, match="is a folder"):
        check_gguf(tmp_path)


def test_truncated_gguf(small_gguf, tmp_path):
    data = small_gguf.read_bytes()
    cut_tensor = tmp_path / "cut-tensor.gguf"
    cut_tensor.write_bytes(data[: len(data) - 1000])
    with pytest.raises(EdgeftError) as error:
        check_gguf(cut_tensor)
    assert "truncated GGUF" in _one_line(error)
    cut_header = tmp_path / "cut-header.gguf"
    cut_header.write_bytes(data[:40])
    with pytest.raises(EdgeftError) as error:
        check_gguf(cut_header)
    assert "truncated" in _one_line(error)


@pytest.mark.parametrize("content, expected", [
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', "eval.jsonl:1: the last message must be"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n',
     "eval.jsonl:2: not valid JSON"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}\n', "eval.jsonl:1: message 0 needs a role"),
    ('{"text": "hello"}\n', "eval.jsonl:1: expected {\"messages\""),
    ("\n\n", "no conversations"),
])
def test_invalid_eval_file(tmp_path, content, expected):
    path = tmp_path / "eval.jsonl"
    path.write_text(content)
    with pytest.raises(EdgeftError) as error:
        read_examples(path)
    assert expected in _one_line(error)


def test_examples_and_baseline_prompt(tmp_path):
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text('{"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "q"}, '
                         '{"role": "assistant", "content": "gold"}]}\n')
    train_path = tmp_path / "train.jsonl"
    train_path.write_text('{"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "u1"}, '
                          '{"role": "assistant", "content": "a1"}]}\n'
                          '{"messages": [{"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]}\n')
    (example,) = read_examples(eval_path)
    assert example.gold == "gold" and example.question == "q" and example.line == 1
    shots = shot_turns(train_path, 2)
    assert [m["content"] for m in shots] == ["u1", "a1", "u2", "a2"]
    prompt = baseline_prompt(example, system="Be exact.", shots=shots)
    assert [m["content"] for m in prompt] == ["Be exact.", "u1", "a1", "u2", "a2", "q"]
    assert baseline_prompt(example, system=None, shots=[])[0]["content"] == "own"
    with pytest.raises(EdgeftError, match="^shots 3 needs shots_from"):  # the library names settings plainly
        shot_turns(None, 3)
    with pytest.raises(EdgeftError, match="only 2 conversations"):
        shot_turns(train_path, 5)


def test_runtime_imports_without_torch():
    """The laptop install has no torch: every runtime module and the three commands import without it."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import importlib, pkgutil, runtime\n"
        "for info in pkgutil.iter_modules(runtime.__path__):\n"
        "    importlib.import_module('runtime.' + info.name)\n"
        "for name in ('eval', 'bench', 'chat'):\n"
        "    importlib.import_module('edgeft.commands.' + name)\n"
        "assert sys.modules['torch'] is None and 'transformers' not in sys.modules\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
