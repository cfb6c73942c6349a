"""One base model in memory, many LoRA adapters initialised once against it, chosen per request, and the decoder
that serves them all at once.

llama-cpp-python's `Llama(lora_path=...)` binds one adapter to one loaded model. llama.cpp itself keeps adapters
apart from the weights: `llama_adapter_lora_init(model, path)` loads an adapter's small tensors next to the model,
and `llama_set_adapters_lora(ctx, ...)` chooses which ones the context's next decode applies. So we load the base
once and the decoder (runtime.decode) sets the adapter of each decode call: the requests of one adapter step
together, the adapter groups take turns. The KV cache is never dropped on a switch: a slot's cells were computed
under its own request's adapter and only that request's later steps read them; the prefix cache is keyed by
(adapter, tokens), so a prefix cached under one adapter is never served to another.

An Engine is not thread-safe: one thread owns it (runtime.serve.worker), or one caller at a time (`edgeft eval`).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from convert.common.errors import EdgeftError
from runtime.chat_prompt import text_tokens
from runtime.generate import prompt_tokens, render_chat
from runtime.load import check_context, check_gguf, open_gguf

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


TOKENIZER_CTX = 64  # the Llama object only renders and tokenizes; the decoder makes its own context


def load_adapter(llm, base, path):
    """llama.cpp's handle of the LoRA adapter GGUF `path` over `llm`'s weights."""
    import llama_cpp

    check_gguf(path, adapter=True)
    handle = llama_cpp.llama_adapter_lora_init(llm.model, os.fspath(path).encode("utf-8"))
    if not handle:
        raise EdgeftError(f"{path}: llama.cpp could not load it as a LoRA adapter of {base} (another architecture "
                          "or tensor shapes?); convert it with `edgeft convert-lora`")
    return handle


class Engine:
    """`Engine("base.gguf", {"sql": "sql.gguf"}, parallel=4)`; `engine.request("sql", tokens, sampling)` for the
    decoder's loop, or `engine.generate(...)` for one request on its own.

    The base answers to `base_name` (default: the file's stem); adapters to their own names. `n_ctx` is split
    evenly among the `parallel` slots, as llama-server splits its context.
    """

    def __init__(self, base: str | os.PathLike, adapters: dict[str, str | os.PathLike] | None = None, *,
                 base_name: str | None = None, n_ctx: int = 4096, threads: int | None = None, parallel: int = 1):
        from runtime.decode import Decoder

        self.base_path = Path(base)
        self.base_name = base_name or self.base_path.stem
        adapters = dict(adapters or {})
        if self.base_name in adapters:
            raise EdgeftError(f"adapter name {self.base_name!r} is the base model's; pick another name")
        if parallel < 1 or n_ctx // parallel < 16:
            raise EdgeftError(f"--parallel {parallel}: each slot needs at least 16 tokens of --ctx {n_ctx}")
        for name, path in adapters.items():
            check_gguf(path, adapter=True)
        self.llm = open_gguf(base, n_ctx=TOKENIZER_CTX, threads=threads)
        self.adapters: dict[str, Adapter] = {}
        self.decoder = None
        try:
            check_context(self.base_path, n_ctx)
            for name, path in adapters.items():
                handle = load_adapter(self.llm, base, path)
                self.adapters[name] = Adapter(name, Path(path), handle, adapter_metadata(handle),
                                              Path(path).stat().st_size)
            self.decoder = Decoder(self.llm, n_seq=parallel, n_ctx=n_ctx // parallel, threads=threads,
                                   adapters={name: adapter.handle for name, adapter in self.adapters.items()})
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> list[str]:
        return [self.base_name, *self.adapters]

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
        return prompt_tokens(self.llm, text, limit=self.decoder.n_ctx - 1)

    def text_tokens(self, text: str) -> list[int]:
        """Tokens of a raw completion prompt, as llama-cpp-python's create_completion makes them (BOS when the
        vocab wants one, special tokens parsed), in linear time (`runtime.chat_prompt.text_tokens`)."""
        return text_tokens(self.llm, text, limit=self.decoder.n_ctx - 1)

    # ---- decoding -------------------------------------------------------------------------------------------

    def request(self, name: str, tokens: Sequence[int], sampling: Sampling,
                cancelled: Callable[[], bool] = lambda: False):
        """The runtime.decode Request for `tokens` under model `name` (refused here when it does not fit a slot)."""
        from runtime.decode import Request, fit

        if name != self.base_name and name not in self.adapters:
            raise KeyError(name)
        return Request(fit(tokens, self.decoder.n_ctx), max_tokens=sampling.max_tokens,
                       adapter=None if name == self.base_name else name, stop=tuple(sampling.stop),
                       temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed, text=True,
                       cancelled=cancelled)

    def generate(self, name: str, tokens: Sequence[int], sampling: Sampling,
                 cancelled: Callable[[], bool] = lambda: False) -> Iterator[Delta | Done]:
        """One request decoded alone (no other requests in the loop): its text as it becomes final, then Done."""
        stream = Stream()
        events: list = []
        self.decoder.run([self.request(name, tokens, sampling, cancelled)],
                         on_step=lambda active: events.extend(stream.events(active[0])))
        yield from events

    def close(self) -> None:
        import llama_cpp

        if getattr(self, "decoder", None) is not None:
            self.decoder.close()
            self.decoder = None
        for adapter in getattr(self, "adapters", {}).values():
            llama_cpp.llama_adapter_lora_free(adapter.handle)
        self.adapters = {}
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None


class Stream:
    """A sequence's text as deltas: cut from the detokenized whole answer (what a non-streaming answer returns),
    never from single pieces, and held back while it ends in a partial UTF-8 character or a possible start of a
    stop string; so the deltas always join to exactly the final text."""

    def __init__(self):
        self.sent = 0

    def events(self, sequence) -> list:
        text, stops = sequence.text, sequence.request.stop
        ready = len(text) if sequence.stopped is not None else _ready_length(text, stops)
        events = []
        if ready > self.sent:
            events.append(Delta(text[self.sent:ready]))
            self.sent = ready
        if sequence.stopped is not None:
            events.append(Done(sequence.finish_reason, len(sequence.request.tokens), len(sequence.generated),
                               list(sequence.generated)))
        return events


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
