"""The fixture factory's tokenizers: real tokenizer files trained on the spot, byte-level BPE with each family's
pre-tokenizer regex (`tokenizers`) or SPM with byte fallback (`sentencepiece`), with each family's specials and
chat template. Built and cached by `build_tokenizer(kind)`; `tests.factory` re-exports it."""

from __future__ import annotations

import json
from pathlib import Path

from tests import corpus
from tests.factory_cache import _cached

TOKENIZER_KINDS = ("bpe-llama3", "bpe-qwen2", "spm-llama2", "spm-mistral", "spm-phi3", "spm-gemma", "bpe-granite",
                   "bpe-o200k")
TOKENIZER_KINDS += ("bpe-lfm2",)

# The pre-tokenizer regexes as the real tokenizer.json files carry them (Llama 3 groups digits by three; Qwen2 splits
# every digit). The converter must recognise them from this definition alone.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# o200k (GPT-4o, Phi-4-mini): case-aware words with contractions attached, digits by three.
O200K_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Mistral v0.1 style: a system message is folded into the first user turn, roles must alternate.
MISTRAL_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system_message != '' %}{{ '[INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first %}{{ bos_token + '[INST] ' + system_message + message['content'] + ' [/INST]' }}"
    "{% else %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# Granite 3.x: role markers, each turn ends with <|end_of_text|>.
GRANITE_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}"
)
# Phi-4-mini: Phi-3's markers without the newlines.
PHI4_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
# Gemma rejects the system role, like the real template does.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Per tokenizer kind: special tokens (in id order after the trained vocabulary for BPE, as user symbols for SPM), which
# of them play bos/eos/pad/unk, the template, and for SPM the model-level options that differ between families.
TOKENIZER_SPECS: dict[str, dict] = {
    "bpe-llama3": {
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                     "<|reserved_special_token_0|>"],
        "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": None, "unk": None,
        "add_bos": True, "regex": LLAMA3_REGEX, "template": LLAMA3_TEMPLATE, "normalize_nfc": False,
    },
    "bpe-qwen2": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None,
        "add_bos": False, "regex": QWEN2_REGEX, "template": CHATML_TEMPLATE, "normalize_nfc": True,
    },
    # Granite 3.x: GPT-2's byte-level regex after splitting every digit apart (llama.cpp's refact/starcoder/smollm
    # regex set); one token plays bos, eos and pad, and no bos is added.
    "bpe-granite": {
        "specials": ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"],
        "bos": "<|end_of_text|>", "eos": "<|end_of_text|>", "pad": "<|end_of_text|>", "unk": None,
        "add_bos": False, "regex": None, "digits": True, "template": GRANITE_TEMPLATE, "normalize_nfc": False,
    },
    "bpe-o200k": {
        "specials": ["<|endoftext|>", "<|system|>", "<|end|>", "<|user|>", "<|assistant|>"],
        "bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>", "unk": None,
        "add_bos": False, "regex": O200K_REGEX, "template": PHI4_TEMPLATE, "normalize_nfc": False,
    },
    # `legacy` is what each real repo's tokenizer_config.json says: meta-llama/Llama-2-7b-hf and microsoft/Phi-3-*
    # false, mistralai/Mistral-7B(-Instruct)-v0.1 true. transformers 5 reads it where it rebuilds LlamaTokenizer
    # (model_type llama, or a folder with tokenizer files only): true gives Metaspace(prepend_scheme="always"), "▁"
    # before the text after every special token as the repos' tokenizer.json and llama.cpp do; false gives "first".
    "spm-llama2": {
        "user_symbols": [], "added": [], "bos": "<s>", "eos": "</s>", "pad": None, "unk": "<unk>", "legacy": False,
        "add_bos": True, "add_dummy_prefix": True, "template": LLAMA2_TEMPLATE, "class": "LlamaTokenizer",
    },
    "spm-mistral": {
        "user_symbols": [], "added": [], "bos": "<s>", "eos": "</s>", "pad": None, "unk": "<unk>", "legacy": True,
        "add_bos": True, "add_dummy_prefix": True, "template": MISTRAL_TEMPLATE, "class": "LlamaTokenizer",
    },
    # Phi-3 keeps Llama 2's tokenizer.model and adds its chat tokens past it (ids 32000..32010 in the real repo) as
    # special added tokens with rstrip=true (whitespace after them is swallowed), except <|endoftext|>; its </s>
    # (id 2) is also rstrip=true, special=false. llama.cpp reproduces exactly this set by name (llama-vocab.cpp).
    "spm-phi3": {
        "user_symbols": [],
        "added": [("<|endoftext|>", False), ("<|assistant|>", True), ("<|system|>", True), ("<|end|>", True),
                  ("<|user|>", True)],
        "rstrip_builtin": ["</s>"],
        "bos": "<s>", "eos": "<|end|>", "pad": "<|endoftext|>", "unk": "<unk>", "legacy": False,
        "add_bos": False, "add_dummy_prefix": True, "template": PHI3_TEMPLATE, "class": "LlamaTokenizer",
    },
    "spm-gemma": {
        "user_symbols": ["<start_of_turn>", "<end_of_turn>"], "added": [],
        "bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>", "legacy": False,
        "add_bos": True, "add_dummy_prefix": False, "template": GEMMA_TEMPLATE, "class": "GemmaTokenizer",
    },
}

# LFM2: ChatML opened by <|startoftext|>; Llama 3's split regex (llama.cpp's "lfm2" pre-tokenizer is its llama3 set).
TOKENIZER_SPECS["bpe-lfm2"] = {
    "specials": ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "bos": "<|startoftext|>", "eos": "<|im_end|>", "pad": "<|pad|>", "unk": None,
    "add_bos": True, "regex": LLAMA3_REGEX, "template": "{{ bos_token }}" + CHATML_TEMPLATE, "normalize_nfc": False,
}

BPE_VOCAB_SIZE = 640
SPM_VOCAB_SIZE = 600


def _train_bpe(spec: dict, out: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=False))
    if spec["normalize_nfc"]:
        tok.normalizer = normalizers.NFC()
    if spec["regex"] is None:  # GPT-2's own regex inside ByteLevel, after optional digit splitting
        steps = [pre_tokenizers.Digits(individual_digits=True)] if spec.get("digits") else []
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            steps + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(spec["regex"]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.training_text(), trainer)
    # Specials go after the trained vocabulary, as in Llama 3 and Qwen2.
    tok.add_special_tokens(spec["specials"])
    if spec["add_bos"]:
        from tokenizers import processors

        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"], eos_token=spec["eos"], pad_token=spec["pad"], unk_token=spec["unk"],
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = spec["template"]
    hf.save_pretrained(out)
    _patch_tokenizer_config(out, add_bos=spec["add_bos"], add_eos=False)


def _train_spm(spec: dict, out: Path) -> None:
    import io

    import sentencepiece as spm
    import transformers
    from tokenizers import AddedToken

    model = io.BytesIO()
    specials = {"pad": spec["pad"], "unk": spec["unk"], "bos": spec["bos"], "eos": spec["eos"]}
    # Gemma puts <pad>, <eos>, <bos>, <unk> at ids 0..3; Llama-family puts <unk>, <s>, </s> at 0..2 and has no pad.
    if spec["class"] == "GemmaTokenizer":
        ids = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
    else:
        ids = {"unk": 0, "bos": 1, "eos": 2, "pad": -1}
    user_symbols = list(spec["user_symbols"])
    added = [text for text, _ in spec["added"]]
    # An eos/pad that is not one of SPM's built-in pieces (Phi-3's <|end|>, <|endoftext|>) is an added token.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.training_text()),
        model_writer=model,
        model_type="bpe",
        vocab_size=SPM_VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=spec["add_dummy_prefix"],
        user_defined_symbols=user_symbols,
        unk_id=ids["unk"], bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"],
        unk_piece=specials["unk"] or "<unk>", bos_piece=specials["bos"] if ids["bos"] >= 0 else "<s>",
        eos_piece="</s>" if spec["eos"] in user_symbols + added else specials["eos"],
        pad_piece=specials["pad"] if ids["pad"] >= 0 else "<pad>",
        num_threads=1,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    # Real SPM repos ship tokenizer.model plus a tokenizer.json that transformers converted from it; produce both
    # the same way (transformers 5 converts on load when only tokenizer.model is there).
    config = {
        "tokenizer_class": spec["class"], "bos_token": spec["bos"], "unk_token": spec["unk"],
        "eos_token": spec["eos"] if spec["eos"] not in added else "</s>",
        "pad_token": spec["pad"] if spec["pad"] not in added else None,
        "add_bos_token": spec["add_bos"], "add_eos_token": False, "legacy": spec["legacy"],
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    special = [s for s in user_symbols if s not in (spec["bos"], spec["eos"], spec["pad"], spec["unk"])]
    if special:
        hf.add_special_tokens({"additional_special_tokens": special})
    if spec["added"]:
        # In id order past the SPM vocabulary, each with the repo's rstrip flag.
        hf.add_tokens([AddedToken(text, rstrip=rstrip, lstrip=False, normalized=False, special=True)
                       for text, rstrip in spec["added"]], special_tokens=True)
        hf.eos_token, hf.pad_token = spec["eos"], spec["pad"]
    if spec["add_dummy_prefix"]:
        # The real Llama 2 / Mistral v0.1 / Phi-3 tokenizer.json (written by transformers 4's converter) has no
        # pre-tokenizer and the normalizer Prepend("▁") + Replace(" ", "▁"): "▁" before every piece of text between
        # added tokens, as sentencepiece run per piece. transformers 5 would write Metaspace here; it loads this file
        # as-is for model types it maps to TokenizersBackend (mistral, phi3) and rebuilds it from `legacy` for llama.
        from tokenizers import normalizers

        hf.backend_tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        hf.backend_tokenizer.pre_tokenizer = None
    hf.chat_template = spec["template"]
    hf.save_pretrained(out)
    _patch_tokenizer_config(out, add_bos=spec["add_bos"], add_eos=False, legacy=spec["legacy"])
    if spec.get("rstrip_builtin"):
        _mark_rstrip(out, spec["rstrip_builtin"])


def _mark_rstrip(out: Path, pieces: list[str]) -> None:
    """Phi-3's own files list its built-in </s> as an added token with rstrip=true, special=false; write the same."""
    tokenizer_json = json.loads((out / "tokenizer.json").read_text())
    config = json.loads((out / "tokenizer_config.json").read_text())
    for entry in tokenizer_json["added_tokens"]:
        if entry["content"] in pieces:
            entry.update(rstrip=True, special=False)
    for entry in (config.get("added_tokens_decoder") or {}).values():
        if entry["content"] in pieces:
            entry.update(rstrip=True, special=False)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, indent=2, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def _patch_tokenizer_config(out: Path, *, add_bos: bool, add_eos: bool, legacy: bool | None = None) -> None:
    """Real repos state add_bos/add_eos (and SPM ones `legacy`) and the template in tokenizer_config.json; make sure
    ours do too."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["add_bos_token"] = add_bos
    config["add_eos_token"] = add_eos
    if legacy is not None:
        config["legacy"] = legacy
    template_file = out / "chat_template.jinja"
    if "chat_template" not in config and template_file.exists():
        config["chat_template"] = template_file.read_text()
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def build_tokenizer(kind: str) -> Path:
    """A cached folder with the tokenizer files of `kind` (one of TOKENIZER_KINDS)."""
    if kind not in TOKENIZER_SPECS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    spec = TOKENIZER_SPECS[kind]
    trainer = _train_bpe if kind.startswith("bpe") else _train_spm
    return _cached(f"tok-{kind}", {"kind": kind}, lambda out: trainer(spec, out))
