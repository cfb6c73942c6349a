"""Offline fixture factory: tiny random-weight HF causal LMs with real tokenizers trained on the spot.

Used by the tests (through conftest's `fixture_model`) and by `make bench`. Nothing is downloaded: tokenizers are
trained here with `tokenizers` (byte-level BPE with Llama-3's or Qwen2's pre-tokenizer regex) or `sentencepiece`
(SPM with byte fallback, as Llama 2 / Mistral / Phi-3 / Gemma ship), and models are built from their transformers
config classes with random weights. Everything is cached by a hash of its inputs and of this file.

    from tests.factory import build_model
    model_dir = build_model("qwen2")                    # tiny: hidden 64, 2 layers
    model_dir = build_model("llama", aligned=True)      # hidden 256 / intermediate 512 for K-quant tests
    model_dir = build_model("mistral", shards=3, dtype="bfloat16")
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tests import corpus

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGEFT_CACHE", ROOT / ".cache")) / "fixtures"

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2")
# Dense, each with its own quirk: phi4mini is Phi3ForCausalLM as Phi-4-mini configures it (partial rotary, LongRoPE, o200k BPE, tied).
ARCHS += ("smollm3", "granite", "olmo2", "gemma3", "phi4mini")
TOKENIZER_KINDS = ("bpe-llama3", "bpe-qwen2", "spm-llama2", "spm-mistral", "spm-phi3", "spm-gemma", "bpe-granite",
                   "bpe-o200k")

DEFAULT_TOKENIZER = {
    "llama": "bpe-llama3",
    "mistral": "spm-mistral",
    "qwen2": "bpe-qwen2",
    "qwen3": "bpe-qwen2",
    "phi3": "spm-phi3",
    "gemma2": "spm-gemma",
    "smollm3": "bpe-llama3",  # SmolLM3 ships Llama 3's tokenizer
    "granite": "bpe-granite",
    "olmo2": "bpe-llama3",  # OLMo 2's dolma2 tokenizer splits with cl100k's regex, which is Llama 3's
    "gemma3": "spm-gemma",
    "phi4mini": "bpe-o200k",
}

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

BPE_VOCAB_SIZE = 640
SPM_VOCAB_SIZE = 600


def _source_hash() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(Path(corpus.__file__).read_bytes())
    return digest.hexdigest()[:12]


# Taken once at import: a process still running older factory code must never fill the cache under the new key.
SOURCE_HASH = _source_hash()


def _cached(kind: str, params: dict, build) -> Path:
    """Build into a temp folder and rename: concurrent test processes may race, the first rename wins."""
    key = hashlib.sha256(json.dumps([kind, params, SOURCE_HASH], sort_keys=True).encode()).hexdigest()[:16]
    target = CACHE / f"{kind}-{key}"
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=CACHE))
    try:
        build(tmp)
        (tmp / ".complete").write_text(json.dumps(params, sort_keys=True))
        try:
            os.replace(tmp, target)
        except OSError:
            # Someone else finished first (target exists and is not empty): theirs is identical.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------------------------------------- tokenizers


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


# ---------------------------------------------------------------------------------------------------- models


def _base_config(arch: str, aligned: bool) -> dict:
    if aligned:
        dims = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2}
    else:
        dims = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2}
    common = {
        "num_hidden_layers": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        **dims,
    }
    rotary_pairs = 3 * dims["hidden_size"] // dims["num_attention_heads"] // 8  # phi4mini: 3/4 of head_dim, halved
    per_arch = {
        "llama": {},
        "mistral": {"sliding_window": None},
        "qwen2": {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "rms_norm_eps": 1e-6},
        "qwen3": {"head_dim": dims["hidden_size"] // dims["num_attention_heads"] * 2, "rms_norm_eps": 1e-6},
        "phi3": {"num_key_value_heads": dims["num_attention_heads"], "original_max_position_embeddings": 1024,
                 "sliding_window": None},
        "gemma2": {"head_dim": dims["hidden_size"] // dims["num_attention_heads"],
                   "query_pre_attn_scalar": dims["hidden_size"] // dims["num_attention_heads"],
                   "sliding_window": 64, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
                   "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh"},
        # 4 layers so that layer 3 is a NoPE layer (no_rope_layers follows from the default interval of 4).
        "smollm3": {"num_hidden_layers": 4, "rope_parameters": {"rope_type": "default", "rope_theta": 2000000.0}},
        # Multipliers as Granite 3.3 2B sets them, scaled to the tiny shape: the attention scale is not 1/sqrt(16).
        "granite": {"embedding_multiplier": 12.0, "attention_multiplier": 0.0625, "residual_multiplier": 0.22,
                    "logits_scaling": 2.0, "rms_norm_eps": 1e-6},
        "olmo2": {"rms_norm_eps": 1e-6},
        # A window shorter than the test prompts, one local and one global layer with their own rope bases.
        "gemma3": {"head_dim": dims["hidden_size"] // dims["num_attention_heads"],
                   "query_pre_attn_scalar": dims["hidden_size"] // dims["num_attention_heads"],
                   "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
                   "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                       "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
                   "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh"},
        # Phi-4-mini: 3/4 of each head rotated, LongRoPE (context 4x the original), GQA, tied embeddings.
        "phi4mini": {"partial_rotary_factor": 0.75, "max_position_embeddings": 4096,
                     "original_max_position_embeddings": 1024, "sliding_window": None,
                     "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                                         "original_max_position_embeddings": 1024,
                                         "long_factor": [1.0 + 0.5 * i for i in range(rotary_pairs)],
                                         "short_factor": [1.0 + 0.1 * i for i in range(rotary_pairs)]}},
    }
    per_arch.update(_moe_hybrid_configs(dims))
    return {**common, **per_arch[arch]}


CONFIG_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM"),
    "granite": ("GraniteConfig", "GraniteForCausalLM"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "phi4mini": ("Phi3Config", "Phi3ForCausalLM"),
}
# Families whose real checkpoints always tie the output to the embeddings.
ALWAYS_TIED = ("gemma2", "gemma3", "smollm3", "phi4mini")


# ---- MoE and hybrid: Qwen3-MoE (Qwen3's tokenizer), Mixtral (Mistral's), LFM2 (its own byte-level BPE).
ARCHS += ("qwen3moe", "mixtral", "lfm2")
MOE_ARCHS = ("qwen3moe", "mixtral")
ALWAYS_TIED += ("lfm2",)
TOKENIZER_KINDS += ("bpe-lfm2",)
DEFAULT_TOKENIZER.update({"qwen3moe": "bpe-qwen2", "mixtral": "spm-mistral", "lfm2": "bpe-lfm2"})
CONFIG_CLASSES.update({"qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
                       "mixtral": ("MixtralConfig", "MixtralForCausalLM"), "lfm2": ("Lfm2Config", "Lfm2ForCausalLM")})
# LFM2: ChatML opened by <|startoftext|>; Llama 3's split regex (llama.cpp's "lfm2" pre-tokenizer is its llama3 set).
TOKENIZER_SPECS["bpe-lfm2"] = {
    "specials": ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "bos": "<|startoftext|>", "eos": "<|im_end|>", "pad": "<|pad|>", "unk": None,
    "add_bos": True, "regex": LLAMA3_REGEX, "template": "{{ bos_token }}" + CHATML_TEMPLATE, "normalize_nfc": False,
}


def _moe_hybrid_configs(dims: dict) -> dict:
    hidden, ff = dims["hidden_size"], dims["intermediate_size"]
    return {
        # 4 experts, 2 per token; experts half the dense width (256 when aligned, so K-quants apply to ffn_down_exps)
        "qwen3moe": {"head_dim": hidden // dims["num_attention_heads"] * 2, "rms_norm_eps": 1e-6,
                     "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": ff // 2,
                     "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": []},
        # 8 experts as Mixtral 8x7B has: llama.cpp's quantizer has rules for exactly n_expert == 8
        "mixtral": {"num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None},
        # conv, attention: both kinds of layer; the MLP width follows HF's auto-adjust rule (512 -> 512, 160 -> 128)
        "lfm2": {"layer_types": ["conv", "full_attention"], "conv_L_cache": 3, "conv_bias": False, "norm_eps": 1e-5,
                 "block_auto_adjust_ff_dim": True, "block_ffn_dim_multiplier": 1.0,
                 "block_multiple_of": 256 if hidden >= 256 else 32},
    }


def _randomize(model, seed: int) -> None:
    """Random weights with enough spread that logits are far from uniform (so top-1 comparisons mean something)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                # Norm weights and biases off their defaults, so a converter that drops or mis-offsets them shows.
                base = 0.0 if ("bias" in name or "gemma" in type(model).__name__.lower()) else 1.0
                param.copy_(base + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=gen) * (1.5 / fan_in ** 0.5))


def _write_shards(state: dict, out: Path, shards: int) -> None:
    from safetensors.torch import save_file

    names = list(state)
    if shards <= 1:
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    per = -(-len(names) // shards)
    weight_map = {}
    total = 0
    for index in range(shards):
        part = names[index * per:(index + 1) * per]
        file_name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, str(out / file_name), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = file_name
            total += state[n].numel() * state[n].element_size()
    index_doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2))


def _build_model(arch: str, params: dict, out: Path) -> None:
    import torch
    import transformers

    tok_dir = build_tokenizer(params["tokenizer"])
    for item in tok_dir.iterdir():
        if item.is_file() and item.name != ".complete":
            shutil.copy2(item, out / item.name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    spec = TOKENIZER_SPECS[params["tokenizer"]]

    config_cls, model_cls = CONFIG_CLASSES[arch]
    config_kwargs = _base_config(arch, params["aligned"])
    config_kwargs.update(params["overrides"])
    ids = {role: (tokenizer.convert_tokens_to_ids(spec[role]) if spec.get(role) else None)
           for role in ("bos", "eos", "pad")}
    config_kwargs.setdefault("vocab_size", len(tokenizer))  # an override: embedding rows past the tokenizer
    config = getattr(transformers, config_cls)(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        tie_word_embeddings=params["tie"] or arch in ALWAYS_TIED,
        **config_kwargs,
    )
    config.architectures = [model_cls]
    torch.manual_seed(params["seed"])
    model = getattr(transformers, model_cls)(config).eval()
    _randomize(model, params["seed"])

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[params["dtype"]]
    model = model.to(dtype)
    config.dtype = params["dtype"]
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if params.get("expert_layout") == "per-expert":
        # What save_pretrained() writes by default: transformers 5's fused in-memory experts reverted to the
        # checkpoint's per-expert tensors (save_original_format=False would keep the fused 3-D ones).
        from transformers.core_model_loading import revert_weight_conversion

        state = {k: v.contiguous() for k, v in revert_weight_conversion(model, state).items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    _write_shards(state, out, params["shards"])
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    if params["license"]:
        (out / "README.md").write_text(
            f"---\nlicense: {params['license']}\n---\n\n# tiny-{arch}\n\nRandom-weight fixture built offline by edgeft's tests.\n"
        )


def build_model(
    arch: str,
    *,
    aligned: bool = False,
    tokenizer: str | None = None,
    shards: int = 1,
    dtype: str = "float32",
    tie: bool = False,
    seed: int = 0,
    license: str | None = "apache-2.0",
    expert_layout: str = "per-expert",
    **config_overrides,
) -> Path:
    """A cached local HF folder holding a tiny random-weight model of `arch` (one of ARCHS)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    params = {
        "arch": arch, "aligned": aligned, "tokenizer": tokenizer or DEFAULT_TOKENIZER[arch], "shards": shards,
        "dtype": dtype, "tie": tie, "seed": seed, "license": license, "overrides": config_overrides,
    }
    if arch in MOE_ARCHS:  # "per-expert" (save_pretrained's default) or "fused" (save_original_format=False)
        params["expert_layout"] = expert_layout
    return _cached(f"{arch}", params, lambda out: _build_model(arch, params, out))


def edited_model(arch: str, folder: Path, **changes) -> Path:
    """A copy of the `arch` fixture in FOLDER/model with `changes` applied to its config.json (for refusal tests)."""
    model = Path(folder) / "model"
    shutil.copytree(build_model(arch), model)
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))
    return model
