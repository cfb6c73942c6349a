"""One loader of a folder's HF tokenizer (`runtime.hf_tokenizer.load_hf_tokenizer`): `edgeft eval --hf`
(runtime.parity) and training, data check and the release's chat parity (edgeft.data.masking) get the same
tokenizer, loaded the same way, offline, with the same one-line error for a folder without a usable tokenizer."""

from __future__ import annotations

import pytest

from convert.common.errors import EdgeftError
from tests.factory import build_tokenizer
from tests.hostile import GOOD, invoke, one_line_error

pytest.importorskip("transformers")

# A lone and a doubled leading space and a special token mid-text: where SentencePiece pipelines drift.
TEXTS = [" ", " a", "  Hello world", "[/INST] Hi", "<s>x 12345 café 你好"]


def _eval_loader():
    import runtime.parity

    return runtime.parity.load_hf_tokenizer


def _training_loader():
    from edgeft.data.masking import load_tokenizer

    return load_tokenizer


@pytest.mark.parametrize("kind", ["spm-llama2", "bpe-llama3"])
def test_eval_and_training_load_the_same_tokenizer(kind):
    from runtime.hf_tokenizer import chat_ids

    folder = build_tokenizer(kind)
    for_eval, for_training = _eval_loader()(folder), _training_loader()(folder)
    assert type(for_eval) is type(for_training) and for_eval.is_fast
    for text in TEXTS:
        assert for_eval.encode(text, add_special_tokens=False) == for_training.encode(text, add_special_tokens=False)
        assert chat_ids(for_eval, text) == chat_ids(for_training, text)
    assert repr(for_eval.backend_tokenizer.normalizer) == repr(for_training.backend_tokenizer.normalizer)
    assert repr(for_eval.backend_tokenizer.pre_tokenizer) == repr(for_training.backend_tokenizer.pre_tokenizer)


def test_the_loader_never_asks_the_hub(monkeypatch):
    from transformers import AutoTokenizer

    seen = []
    real = AutoTokenizer.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        seen.append(kwargs.get("local_files_only"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(recording))
    _eval_loader()(build_tokenizer("bpe-llama3"))
    _training_loader()(build_tokenizer("bpe-llama3"))
    assert seen == [True, True]


@pytest.mark.parametrize("files, needle", [
    (None, "no such model folder"),
    ({}, "no tokenizer in this folder (none of tokenizer.json, tokenizer.model, tokenizer_config.json)"),
    ({"tokenizer.json": "garbage"}, "cannot load a tokenizer (JSONDecodeError: Expecting value"),
])
def test_one_error_line_for_both_callers(tmp_path, files, needle):
    folder = tmp_path / "model"
    if files is not None:
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    from runtime.parity import check_parity

    messages = []
    # The tokenizer is loaded before the GGUF is opened: a missing GGUF cannot mask the folder's error.
    for check in (lambda: check_parity(tmp_path / "none.gguf", folder, []), lambda: _training_loader()(folder)):
        with pytest.raises(EdgeftError) as caught:
            check()
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and needle in messages[0] and "\n" not in messages[0]
    assert messages[0].startswith(f"{folder}: ")


# ---- hostile input -------------------------------------------------------------------------------------------------

# A folder that is not a tokenizer: what the one line says (transformers' own message is a six-line list).
NOT_A_TOKENIZER = [
    ({}, "no tokenizer in this folder (none of tokenizer.json, tokenizer.model, tokenizer_config.json)"),
    ({"tokenizer.json": "garbage"}, "cannot load a tokenizer (JSONDecodeError: Expecting value"),
]


@pytest.mark.hostile
@pytest.mark.parametrize("files, needle", NOT_A_TOKENIZER)
@pytest.mark.parametrize("command", [["check"], ["sample", "-o", "{tmp}/s.md"]])
def test_a_folder_that_is_not_a_tokenizer_is_one_line(tmp_path, files, needle, command):
    pytest.importorskip("transformers")
    path = tmp_path / "train.jsonl"
    path.write_text(GOOD + "\n")
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    args = [part.format(tmp=tmp_path) for part in command]
    one_line_error(invoke("data", args[0], path, *args[1:], "--tokenizer", folder), f"{folder}: ", needle)
    assert not (tmp_path / "s.md").exists()
