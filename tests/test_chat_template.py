"""One chat template everywhere: the folder rule (transformers' precedence) decides what the data tools mask, what
training renders, what the merge writes, what the converter embeds and what a LoRA GGUF carries; and edgeft's
tokenizer splits text as llama.cpp does, also for Llama-2 SentencePiece folders that say `legacy: false`.

References: transformers' own `AutoTokenizer.get_chat_template()` / `apply_chat_template` for the template, and
llama.cpp (llama-cpp-python reading our GGUF) for the token ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from convert.vocab.chat_template import chat_template_of
from convert.common.errors import EdgeftError
from tests import corpus
from tests.factory import build_model

pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

# Llama-3 tokens, another layout than the fixture's own template (one newline after the header, no trim).
JINJA = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n' + "
         "m['content'] + '<|eot_id|>' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n' }}{% endif %}")
TOOL_USE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi  there"},
            {"role": "assistant", "content": "Hello."}]


def _transformers_template(folder: Path) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).get_chat_template()


def _gguf_template(folder: Path, out: Path) -> str:
    from convert import convert_model
    from tests.convert_helpers import open_llama

    llm = open_llama(convert_model(folder, out, outtype="f32"), vocab_only=True)
    template = llm.metadata.get("tokenizer.chat_template")
    llm.close()
    return template


def _config(folder: Path) -> dict:
    return json.loads((folder / "tokenizer_config.json").read_text())


def _set_config_template(folder: Path, template) -> None:
    config = _config(folder)
    config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture
def llama_copy(tmp_path) -> Path:
    """The Llama-3-tokenizer fixture model; it ships its template in both chat_template.jinja and the config."""
    folder = tmp_path / "model"
    shutil.copytree(build_model("llama"), folder)
    assert (folder / "chat_template.jinja").read_text() == _config(folder)["chat_template"] != JINJA
    return folder


@pytest.mark.parametrize("layout", ["both files, different", "config only", "named list"])
def test_every_stage_takes_the_template_transformers_takes(layout, llama_copy, tmp_path):
    from edgeft.data.masking import mask_example
    from edgeft.data.templates import render_chat, special_tokens_of, template_for
    from edgeft.train.recipe import Recipe
    from edgeft.train.model import load_tokenizer

    config_template = _config(llama_copy)["chat_template"]
    if layout == "both files, different":
        (llama_copy / "chat_template.jinja").write_text(JINJA)
        want = JINJA
    elif layout == "config only":
        (llama_copy / "chat_template.jinja").unlink()
        want = config_template
    else:
        (llama_copy / "chat_template.jinja").unlink()
        _set_config_template(llama_copy, [{"name": "tool_use", "template": TOOL_USE},
                                          {"name": "default", "template": JINJA}])
        want = JINJA
    assert _transformers_template(llama_copy) == want  # the reference: what transformers itself picks
    assert chat_template_of(llama_copy) == template_for(llama_copy) == want
    # data check / masking
    masked = mask_example(MESSAGES, llama_copy)
    assert masked.text == render_chat(want, MESSAGES, special_tokens=special_tokens_of(llama_copy))
    # training
    assert load_tokenizer(llama_copy, Recipe()).chat_template == want
    # convert
    assert _gguf_template(llama_copy, tmp_path / "model.gguf") == want


def test_named_templates_without_a_default_are_refused(llama_copy):
    (llama_copy / "chat_template.jinja").unlink()
    _set_config_template(llama_copy, [{"name": "tool_use", "template": TOOL_USE}, {"name": "rag", "template": JINJA}])
    with pytest.raises(EdgeftError, match="none named 'default'") as refused:
        chat_template_of(llama_copy)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="no default"):  # transformers cannot pick one either
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(llama_copy)).get_chat_template()


def test_additional_template_folder_follows_transformers(llama_copy):
    extra = llama_copy / "additional_chat_templates"
    extra.mkdir()
    (extra / "tool_use.jinja").write_text(TOOL_USE)
    assert chat_template_of(llama_copy) == _transformers_template(llama_copy) == _config(llama_copy)["chat_template"]
    (llama_copy / "chat_template.jinja").unlink()  # then transformers ignores tokenizer_config.json's template
    with pytest.raises(EdgeftError, match="none named 'default'"):
        chat_template_of(llama_copy)
    (extra / "default.jinja").write_text(JINJA)
    assert chat_template_of(llama_copy) == _transformers_template(llama_copy) == JINJA


@pytest.mark.parametrize("trained", [False, True], ids=["base template", "recipe template"])
def test_merged_folder_carries_one_template(trained, llama_copy, tmp_path):
    """The base has both files, different; the merged folder says one template everywhere: the adapter's when
    training saved one (a recipe template), else the base's .jinja one."""
    pytest.importorskip("peft")
    from edgeft.merge import merge_adapter
    from tests.test_merge import make_adapter

    (llama_copy / "chat_template.jinja").write_text(JINJA)
    adapter, _, _ = make_adapter(llama_copy, tmp_path / "adapter", target_modules=["q_proj"])
    want = JINJA
    if trained:
        want = JINJA.replace("<|end_header_id|>\n", "<|end_header_id|>\n\n")
        (adapter / "chat_template.jinja").write_text(want)
    merged = merge_adapter(llama_copy, adapter, tmp_path / "merged")
    assert (merged / "chat_template.jinja").read_text() == want
    assert _config(merged)["chat_template"] == want  # what llama.cpp's own converter reads first
    assert _transformers_template(merged) == chat_template_of(merged) == want
    assert _gguf_template(merged, tmp_path / "merged.gguf") == want



def test_merge_rewrites_named_and_processor_templates(llama_copy):
    """A base whose config holds named templates and a processor-style chat_template.json: the trained template
    becomes the default everywhere, the other named ones stay."""
    from edgeft.merge import _one_template

    _set_config_template(llama_copy, [{"name": "tool_use", "template": TOOL_USE},
                                      {"name": "default", "template": "{{ 'old' }}"}])
    (llama_copy / "chat_template.json").write_text(json.dumps({"chat_template": "{{ 'old' }}"}))
    _one_template(llama_copy, JINJA)
    named = {e["name"]: e["template"] for e in _config(llama_copy)["chat_template"]}
    assert named == {"tool_use": TOOL_USE, "default": JINJA}
    assert json.loads((llama_copy / "chat_template.json").read_text())["chat_template"] == JINJA
    (llama_copy / "chat_template.jinja").unlink()  # even without the .jinja file the config alone says it
    assert chat_template_of(llama_copy) == _transformers_template(llama_copy) == JINJA

def test_lora_gguf_carries_the_trained_template(llama_copy, tmp_path):
    pytest.importorskip("peft")
    from convert.lora import convert_lora, describe
    from tests.test_merge import make_adapter

    adapter, _, _ = make_adapter(llama_copy, tmp_path / "adapter", target_modules=["q_proj"])
    (adapter / "chat_template.jinja").write_text(JINJA)
    with pytest.warns(UserWarning, match="another chat template than the base"):
        info = describe(convert_lora(adapter, tmp_path / "a.gguf", base_dir=llama_copy))
    assert info["tokenizer.chat_template"] == JINJA


# ------------------------------------------------------------------------------------ Llama-2, legacy: false

def _agreement(tokenizer, llm, strings) -> list[str]:
    return [text for text in strings
            if tokenizer.encode(text, add_special_tokens=False) != llm.tokenize(text.encode(), add_bos=False,
                                                                               special=True)]


def test_llama2_legacy_false_tokenizes_like_llama_cpp(capsys):
    """transformers 5 rebuilds a legacy:false Llama-2 tokenizer with Metaspace(prepend_scheme="first"), which puts
    no "▁" after special tokens and none before a leading space; edgeft's loader gives it llama.cpp's pipeline."""
    from transformers import AutoTokenizer

    from edgeft.data.masking import load_tokenizer, mask_example
    from tests.convert_helpers import converted, open_llama
    from tests.test_convert_tokenizer import CONVERSATIONS

    folder = build_model("llama", tokenizer="spm-llama2")
    assert _config(folder)["legacy"] is False
    llm = open_llama(converted("llama", "f32", tokenizer="spm-llama2"), vocab_only=True)
    strings = corpus.tricky_strings()
    assert len(strings) == 240
    plain = _agreement(AutoTokenizer.from_pretrained(str(folder)), llm, strings)
    ours = load_tokenizer(folder)
    aligned = _agreement(ours, llm, strings)
    with capsys.disabled():
        print(f"\nspm-llama2 legacy:false: {len(strings) - len(plain)}/{len(strings)} strings agree with llama.cpp "
              f"as transformers loads it, {len(strings) - len(aligned)}/{len(strings)} with edgeft's loader")
    assert plain, "transformers now agrees by itself; match_llama_cpp may be obsolete"
    assert aligned == []
    for name, messages in CONVERSATIONS.items():  # chat text: special tokens followed by text, masks included
        example = mask_example(messages + [{"role": "assistant", "content": " Fine."}], ours)
        assert example.input_ids == llm.tokenize(example.text.encode(), add_bos=False, special=True), name
    llm.close()
    assert ours.decode(ours.encode(" a  b", add_special_tokens=False)) == " a  b"


def test_llama_cpp_normalization_mismatch_is_refused(tmp_path):
    """A tokenizer.model that normalizes text (NFKC and the like) cannot tokenize as llama.cpp does, which skips
    that step: refused in one line that says why and what to do."""
    from sentencepiece import sentencepiece_model_pb2

    from runtime.hf_tokenizer import match_llama_cpp
    from edgeft.data.masking import load_tokenizer

    folder = tmp_path / "nfkc"
    shutil.copytree(build_model("llama", tokenizer="spm-llama2"), folder)
    assert load_tokenizer(folder).backend_tokenizer.pre_tokenizer is None  # as shipped: aligned, not refused
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((folder / "tokenizer.model").read_bytes())
    proto.normalizer_spec.name = "nmt_nfkc"
    proto.normalizer_spec.precompiled_charsmap = b"\x00" * 16
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())
    with pytest.raises(EdgeftError, match="llama.cpp does not apply") as refused:
        match_llama_cpp(tokenizer, folder)
    assert "\n" not in str(refused.value) and "nmt_nfkc" in str(refused.value)


def test_bpe_and_repo_pipelines_are_left_alone():
    """Where transformers already runs llama.cpp's pipeline (byte-level BPE; the repo's tokenizer.json for
    mistral/phi3; Gemma), the loader changes nothing."""
    from transformers import AutoTokenizer

    from runtime.hf_tokenizer import match_llama_cpp

    for arch, kind in (("llama", "bpe-llama3"), ("mistral", "spm-mistral"), ("gemma2", "spm-gemma")):
        folder = build_model(arch, tokenizer=kind)
        assert match_llama_cpp(AutoTokenizer.from_pretrained(str(folder)), folder) is None, kind


# ------------------------------------------------------------------------------------ the release's chat parity

@pytest.mark.parametrize("kind, arch", [("bpe-llama3", "llama"), ("bpe-qwen2", "qwen2"), ("spm-llama2", "llama"),
                                        ("spm-mistral", "mistral"), ("spm-phi3", "phi3"), ("spm-gemma", "gemma2")])
def test_chat_parity_passes_for_every_tokenizer_family(kind, arch):
    """System / no system, multi-turn, generation prompt: text and ids equal between transformers on the folder
    (edgeft's loader) and llama-cpp-python on the GGUF, for each fixture family (Gemma folds the system turn)."""
    from edgeft.release.parity import check_chat_parity
    from runtime.chat_parity import PROBES
    from tests.convert_helpers import converted

    folder = build_model(arch, tokenizer=kind)
    summary = check_chat_parity(converted(arch, "f32", tokenizer=kind), folder,
                                trained_template=chat_template_of(folder), conversations=[MESSAGES])
    assert summary == {"n": len(PROBES) + 2, "template_matches": len(PROBES) + 2, "token_matches": len(PROBES) + 2,
                       "ok": True}


def test_chat_parity_names_a_token_difference():
    """transformers' own legacy:false Llama-2 tokenizer against the GGUF: same text, other ids, named in one line."""
    from transformers import AutoTokenizer

    from runtime.chat_parity import chat_cases, compare_chat
    from tests.convert_helpers import converted

    folder = build_model("llama", tokenizer="spm-llama2")
    result = compare_chat(converted("llama", "f32", tokenizer="spm-llama2"), AutoTokenizer.from_pretrained(str(folder)),
                          chat_cases())
    assert not result["ok"] and result["template_matches"] == result["n"] and result["token_matches"] < result["n"]
    first = result["first"]
    assert "\n" not in first and first.startswith("'one turn, no system, generation prompt': same text, token ids")
    assert "'▁'" in first  # llama.cpp's "▁" after <s>, which transformers' rebuilt pipeline leaves out


def test_chat_parity_refuses_a_gguf_with_another_template(llama_copy, tmp_path):
    from edgeft.release.parity import check_chat_parity

    gguf = tmp_path / "base.gguf"
    _gguf_template(llama_copy, gguf)  # embeds the base's template
    (llama_copy / "chat_template.jinja").write_text(JINJA)  # the folder now says the trained one
    with pytest.raises(EdgeftError, match="embedded chat template is not the one training used") as refused:
        check_chat_parity(gguf, llama_copy, trained_template=JINJA)
    assert "\n" not in str(refused.value)
    with pytest.raises(EdgeftError, match="merged folder's chat template is not the one training used"):
        check_chat_parity(gguf, llama_copy, trained_template=TOOL_USE)
