"""The release's chat-template check: the GGUF we ship must render and tokenize chats exactly as training did.

Three facts, each a one-line failure naming what differs:
1. the merged folder's template (by the one rule, `convert.vocab.chat_template`) is the one training used (the
   adapter's chat_template.jinja);
2. the GGUF embeds that same template;
3. conversations with and without a system turn, multi-turn, with the generation prompt, and some of the eval
   data render to the same text and the same ids through transformers on the merged folder (loaded as training
   loads it, `runtime.hf_tokenizer.load_hf_tokenizer`) and through the GGUF in llama-cpp-python, BOS as
   llama.cpp feeds it (`runtime.chat_parity`, the comparison `edgeft eval --hf` makes too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from convert.common.errors import EdgeftError


def _first_char_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _same_template(found: str | None, want: str, what: str, where: str, fix: str) -> None:
    if found == want:
        return
    if found is None:
        raise EdgeftError(f"{where}: {what} is missing, but training used one; {fix}")
    at = _first_char_difference(found, want)
    raise EdgeftError(f"{where}: {what} is not the one training used (first difference at char {at}: "
                      f"{found[max(0, at - 15):at + 25]!r} vs trained {want[max(0, at - 15):at + 25]!r}); {fix}")


def check_chat_parity(gguf: Path, merged_dir: Path, *, trained_template: str | None,
                      conversations: Sequence[Sequence[dict]] = ()) -> dict:
    """Raise EdgeftError (one line) on any difference; return the comparison's summary otherwise."""
    from convert.vocab.chat_template import chat_template_of
    from edgeft.data.masking import load_tokenizer
    from runtime.chat_parity import chat_cases, compare_chat

    gguf, merged_dir = Path(gguf), Path(merged_dir)
    merged_template = chat_template_of(merged_dir)
    if trained_template is not None:
        _same_template(merged_template, trained_template, "the merged folder's chat template", str(merged_dir),
                       "rerun `edgeft merge`, which writes the adapter's template into the merged folder")
    tokenizer = load_tokenizer(merged_dir)
    result = compare_chat(gguf, tokenizer, chat_cases(conversations))
    if merged_template is not None:
        _same_template(result["embedded_template"], merged_template, "the GGUF's embedded chat template", str(gguf),
                       "reconvert it from the merged folder (`edgeft convert`), whose template is the trained one")
    if not result["ok"]:
        raise EdgeftError(f"{gguf}: chat parity with {merged_dir} failed on {len(result['mismatches'])} of "
                          f"{result['n']} conversations, first {result['first']}; the GGUF would be served other "
                          "text or tokens than training saw: reconvert it from the merged folder")
    return {key: result[key] for key in ("n", "template_matches", "token_matches", "ok")}
