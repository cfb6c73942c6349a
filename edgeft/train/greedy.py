"""Greedy answers from the model being trained, as the shipped GGUF would give them: the prompt rendered with the
template training used and tokenized as llama.cpp feeds it (BOS by `convert.vocab.special.bos_first`), argmax
decoding that stops at the first end-of-turn or end-of-text token.

This scores a checkpoint without merging and converting it: on a 135M base a batch of transformers' `generate`
costs about what loading one GGUF does. tests/test_select.py checks that the answers are the ones llama.cpp gives
for the merged checkpoint's GGUF (runtime.generate.chat_reply) on a fixture.
"""

from __future__ import annotations

from typing import Sequence

# Decoding more than the longest gold answer plus this margin cannot make an exact, JSON or SQL answer right.
ANSWER_MARGIN_TOKENS = 16


def prompt_ids(messages: Sequence[dict], tok) -> list[int]:
    """The ids llama.cpp feeds for `messages` with the generation prompt (runtime.generate.prompt_tokens' rule:
    `chat_ids`, where message text never yields a control token)."""
    from runtime.hf_tokenizer import chat_ids
    from edgeft.data.templates import render_chat, special_tokens_of

    text = render_chat(tok.chat_template, messages, add_generation_prompt=True,
                       special_tokens=special_tokens_of(tok.tokenizer))
    return chat_ids(tok.tokenizer, text)


def stop_ids(tok) -> set[int]:
    """End-of-generation tokens: EOS and the end-of-turn markers of the common templates that are single tokens
    here (llama.cpp's `llama_vocab_is_eog` set, as far as a HF tokenizer can tell it)."""
    from edgeft.data.masking import KNOWN_END_OF_TURN

    vocab = tok.tokenizer.get_vocab()
    found = {vocab[text] for text in KNOWN_END_OF_TURN if text in vocab}
    if tok.tokenizer.eos_token_id is not None:
        found.add(tok.tokenizer.eos_token_id)
    return found


def answer_budget(golds: Sequence[str], tok) -> int:
    """New tokens to decode: the longest gold answer's token count plus a margin."""
    return max(len(tok.tokenizer(g, add_special_tokens=False)["input_ids"]) for g in golds) + ANSWER_MARGIN_TOKENS


def greedy_answers(model, tok, prompts: Sequence[Sequence[dict]], *, max_new_tokens: int,
                   batch_size: int = 8) -> list[str]:
    """One greedy answer per prompt (a list of messages), decoded in left-padded batches of similar length."""
    import torch
    from transformers import GenerationConfig

    ids = [prompt_ids(messages, tok) for messages in prompts]
    stops = stop_ids(tok)
    # A fresh config: the base's generation_config.json may sample or penalise repeats; the eval does neither.
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=sorted(stops),
                              pad_token_id=tok.pad_id, use_cache=True)
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                width = max(len(ids[i]) for i in chosen)
                padded = [[tok.pad_id] * (width - len(ids[i])) + ids[i] for i in chosen]
                mask = [[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in chosen]
                out = model.generate(input_ids=torch.tensor(padded, device=device),
                                     attention_mask=torch.tensor(mask, device=device), generation_config=config)
                for index, row in zip(chosen, out[:, width:].tolist()):
                    answers[index] = _text_before_stop(row, stops, tok)
    finally:
        model.train(was_training)
    return answers


def _text_before_stop(tokens: list[int], stops: set[int], tok) -> str:
    cut = next((i for i, token in enumerate(tokens) if token in stops), len(tokens))
    return tok.tokenizer.decode(tokens[:cut], skip_special_tokens=False)
