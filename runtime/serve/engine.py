"""One base model in memory, many LoRA adapters initialised once against it, switched per request.

llama-cpp-python's `Llama(lora_path=...)` binds one adapter to one loaded model. llama.cpp itself keeps adapters
apart from the weights: `llama_adapter_lora_init(model, path)` loads an adapter's small tensors next to the model,
and `llama_set_adapters_lora(ctx, ...)` chooses which ones the context's next decode applies. So we load the base
once and switch the set on the one context, never reloading anything.

What must not survive a switch is the KV cache: its keys and values were computed through the previous adapter's
q/k/v deltas, so a prompt prefix cached under adapter A is wrong under adapter B. `activate` therefore drops the
cache (and our prefix-reuse bookkeeping) whenever the adapter changes; within one adapter the shared prefix of
consecutive prompts (a system prompt, the chat header) is reused, as llama-server's prompt cache does.

An Engine is not thread-safe: one thread owns it (runtime.serve.worker), or one caller at a time (`edgeft eval`).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from edgeft.errors import EdgeftError
from runtime.chat_prompt import text_tokens
from runtime.generate import (_reusable_prefix, detokenize, is_end_of_generation, last_logits, prompt_tokens,
                              render_chat)
from runtime.load import check_gguf, open_gguf

_META_BUFFER = 1 << 16  # a chat template is the longest value we read; longer values are reported cut


@dataclass
class Adapter:
    name: str
    path: Path
    handle: object  # llama_adapter_lora_p
    metadata: dict[str, str] = field(default_factory=dict)
    file_size: int = 0


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: argmax, exactly what greedy_generate does
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Delta:
    text: str


@dataclass
class Done:
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    tokens: list[int]


def adapter_metadata(handle) -> dict[str, str]:
    """Every key/value of an adapter GGUF's header, as llama.cpp read it (values as strings)."""
    import llama_cpp

    buffer = ctypes.create_string_buffer(_META_BUFFER)
    metadata = {}
    for index in range(llama_cpp.llama_adapter_meta_count(handle)):
        if llama_cpp.llama_adapter_meta_key_by_index(handle, index, buffer, _META_BUFFER) < 0:
            continue
        key = buffer.value.decode("utf-8", errors="replace")
        if llama_cpp.llama_adapter_meta_val_str_by_index(handle, index, buffer, _META_BUFFER) < 0:
            continue
        metadata[key] = buffer.value.decode("utf-8", errors="replace")
    return metadata


class Engine:
    """`Engine("base.gguf", {"sql": "sql.gguf"})`; `engine.activate("sql")`; `engine.generate(...)`.

    The base answers to `base_name` (default: the file's stem); adapters to their own names.
    """

    def __init__(self, base: str | os.PathLike, adapters: dict[str, str | os.PathLike] | None = None, *,
                 base_name: str | None = None, n_ctx: int = 4096, threads: int | None = None, **llama_kwargs):
        import llama_cpp

        self.base_path = Path(base)
        self.base_name = base_name or self.base_path.stem
        adapters = dict(adapters or {})
        if self.base_name in adapters:
            raise EdgeftError(f"adapter name {self.base_name!r} is the base model's; pick another name")
        for name, path in adapters.items():
            check_gguf(path, adapter=True)
        self.llm = open_gguf(base, n_ctx=n_ctx, threads=threads, **llama_kwargs)
        self.adapters: dict[str, Adapter] = {}
        try:
            for name, path in adapters.items():
                handle = llama_cpp.llama_adapter_lora_init(self.llm.model, os.fspath(path).encode("utf-8"))
                if not handle:
                    raise EdgeftError(f"{path}: llama.cpp could not load it as a LoRA adapter of {base} (another "
                                      "architecture or tensor shapes?); convert it with `edgeft convert-lora`")
                self.adapters[name] = Adapter(name, Path(path), handle, adapter_metadata(handle),
                                              Path(path).stat().st_size)
        except BaseException:
            self.close()
            raise
        self.active: str | None = None
        self._set([])
        self.active = self.base_name

    # ---- adapters -------------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [self.base_name, *self.adapters]

    def activate(self, name: str) -> None:
        """Make `name` (the base or an adapter) the one the next decode uses; drops the KV cache on a change."""
        if name == self.active:
            return
        if name != self.base_name and name not in self.adapters:
            raise KeyError(name)
        self._set([self.adapters[name].handle] if name in self.adapters else [])
        self.active = name

    def _set(self, handles: list) -> None:
        import llama_cpp

        if handles:
            array = (llama_cpp.llama_adapter_lora_p_ctypes * len(handles))(*handles)
            scales = (ctypes.c_float * len(handles))(*([1.0] * len(handles)))
            status = llama_cpp.llama_set_adapters_lora(self.llm.ctx, array, len(handles), scales)
        else:
            status = llama_cpp.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
        if status:
            raise RuntimeError(f"llama_set_adapters_lora failed ({status})")
        self.forget_cache()

    def forget_cache(self) -> None:
        """Clear every KV cell and the prefix bookkeeping: the next prompt is evaluated from its first token."""
        import llama_cpp

        self.llm.reset()
        memory = llama_cpp.llama_get_memory(self.llm.ctx)
        if memory is not None:
            llama_cpp.llama_memory_clear(memory, True)

    def chat_template(self, name: str) -> str | None:
        """An adapter GGUF may carry the template it was trained with (`edgeft convert-lora` writes it when the
        training data used one); otherwise the base's embedded template applies."""
        adapter = self.adapters.get(name)
        if adapter is not None and adapter.metadata.get("tokenizer.chat_template"):
            return adapter.metadata["tokenizer.chat_template"]
        return None

    def describe(self) -> list[dict]:
        """The models a client can ask for, with each adapter's own header keys (general.*, adapter.*)."""
        base = {"id": self.base_name, "kind": "base", "file": str(self.base_path),
                "file_size": self.base_path.stat().st_size,
                "metadata": {k: str(v) for k, v in self.llm.metadata.items() if k.startswith("general.")}}
        rows = [base]
        for adapter in self.adapters.values():
            rows.append({"id": adapter.name, "kind": "lora", "file": str(adapter.path),
                         "file_size": adapter.file_size, "base": self.base_name,
                         "metadata": {k: v for k, v in adapter.metadata.items()
                                      if k.startswith(("general.", "adapter.", "training."))}})
        return rows

    # ---- prompts --------------------------------------------------------------------------------------------

    def chat_tokens(self, name: str, messages: Sequence[dict], tools: list | None = None) -> list[int]:
        text = render_chat(self.llm, messages, path=str(self.base_path), template=self.chat_template(name),
                           tools=tools)
        return prompt_tokens(self.llm, text, limit=self.llm.n_ctx() - 1)

    def text_tokens(self, text: str) -> list[int]:
        """Tokens of a raw completion prompt, as llama-cpp-python's create_completion makes them (BOS when the
        vocab wants one, special tokens parsed), in linear time (`runtime.chat_prompt.text_tokens`)."""
        return text_tokens(self.llm, text, limit=self.llm.n_ctx() - 1)

    # ---- decoding -------------------------------------------------------------------------------------------

    def generate(self, name: str, tokens: Sequence[int], sampling: Sampling,
                 cancelled: Callable[[], bool] = lambda: False) -> Iterator[Delta | Done]:
        """Decode from `tokens` under adapter `name`, yielding text as it becomes final and then one Done.

        Text is cut from the detokenized whole sequence (what a non-streaming answer returns), never from single
        pieces, and held back while it ends in a partial UTF-8 character or a possible start of a stop string: so
        the deltas always join to exactly the final text.
        """
        n_ctx = self.llm.n_ctx()
        tokens = list(tokens)
        if not tokens:
            raise EdgeftError("the prompt is empty")
        if len(tokens) >= n_ctx:
            raise EdgeftError(f"the prompt is {len(tokens)} tokens, which does not fit the context of {n_ctx} "
                              "tokens (with room for the answer)")
        self.activate(name)
        shared = _reusable_prefix(self.llm, tokens)
        self.llm.n_tokens = shared  # eval() drops the KV cells from n_tokens on before decoding
        try:
            self.llm.eval(tokens[shared:])
        except BaseException:
            self.forget_cache()
            raise
        rng = np.random.default_rng(sampling.seed)
        generated: list[int] = []
        sent = 0
        finish = "length"
        text = ""
        while True:
            if cancelled():
                finish = "cancelled"
                break
            token = self._choose(sampling, rng)
            if is_end_of_generation(self.llm, token):
                finish = "stop"
                break
            generated.append(token)
            text = detokenize(self.llm, generated)
            cut = _find_stop(text, sampling.stop, start=max(0, sent - max((len(s) for s in sampling.stop),
                                                                            default=0)))
            if cut is not None:
                text, finish = text[:cut], "stop"
                break
            ready = _ready_length(text, sampling.stop)
            if ready > sent:
                yield Delta(text[sent:ready])
                sent = ready
            if len(generated) >= sampling.max_tokens or self.llm.n_tokens + 1 >= n_ctx:
                break
            try:
                self.llm.eval([token])
            except BaseException:
                self.forget_cache()
                raise
        if len(text) > sent:
            yield Delta(text[sent:])
        yield Done(finish, len(tokens), len(generated), generated)

    def _choose(self, sampling: Sampling, rng: np.random.Generator) -> int:
        logits = last_logits(self.llm)
        if sampling.temperature <= 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / sampling.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if sampling.top_p < 1.0:
            order = np.argsort(-probs)
            keep = order[: int(np.searchsorted(np.cumsum(probs[order]), sampling.top_p)) + 1]
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        return int(rng.choice(len(probs), p=probs))

    def close(self) -> None:
        import llama_cpp

        for adapter in getattr(self, "adapters", {}).values():
            llama_cpp.llama_adapter_lora_free(adapter.handle)
        self.adapters = {}
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None


def _find_stop(text: str, stops: Sequence[str], *, start: int) -> int | None:
    hits = [index for index in (text.find(stop, start) for stop in stops if stop) if index >= 0]
    return min(hits) if hits else None


def _ready_length(text: str, stops: Sequence[str]) -> int:
    """How much of `text` can be sent: not a trailing partial character (U+FFFD from a cut UTF-8 sequence), not
    a tail that a stop string could still complete."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd" and len(text) - end < 3:
        end -= 1
    held = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, end), held, -1):
            if text[end - length:end] == stop[:length]:
                held = length
                break
    return end - held
