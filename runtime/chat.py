"""A chat session over a GGUF (optionally with a GGUF LoRA adapter), the library half of `edgeft chat`."""

from __future__ import annotations

import os

from runtime.eval_settings import SettingError
from runtime.load import open_gguf

TOKENIZER_CTX = 64  # the Llama object only renders and tokenizes; the decoder makes its own context


class ChatSession:
    """Keeps the conversation; each reply re-renders it with the embedded template and decodes greedily
    (runtime.decode; the slot keeps the conversation's cells, so a turn evaluates only what it added).

    Example: `ChatSession("model.gguf").send("Hello")`.
    """

    def __init__(self, model: str | os.PathLike, *, lora_path: str | os.PathLike | None = None,
                 system: str | None = None, max_tokens: int = 512, n_ctx: int = 4096, threads: int | None = None):
        from runtime.decode import Decoder
        from runtime.load import check_context
        from runtime.serve.engine import load_adapter

        if n_ctx < 1 or max_tokens < 1:
            setting, value = ("n_ctx", n_ctx) if n_ctx < 1 else ("max_tokens", max_tokens)
            raise SettingError(f"<{setting}> {value}: must be at least 1", setting)
        self.path = str(model)
        self.llm = open_gguf(model, n_ctx=TOKENIZER_CTX, threads=threads)
        check_context(self.llm.model_path, n_ctx)
        self.adapter = None if lora_path is None else load_adapter(self.llm, model, lora_path)
        adapters = {} if self.adapter is None else {"lora": self.adapter}
        self.decoder = Decoder(self.llm, n_ctx=n_ctx, adapters=adapters, threads=threads)
        self.system = system
        self.max_tokens = max_tokens
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str) -> str:
        """The reply to `text`; EdgeftError (conversation unchanged) when the conversation no longer fits the context."""
        from runtime.decode import Request
        from runtime.generate import generation, prompt_tokens, render_chat

        messages = self.messages + [{"role": "user", "content": text}]
        tokens = prompt_tokens(self.llm, render_chat(self.llm, messages, path=self.path))
        request = Request(tokens, max_tokens=self.max_tokens, adapter=None if self.adapter is None else "lora")
        reply = generation(self.decoder, self.decoder.run([request])[0]).text.strip()
        self.messages = messages + [{"role": "assistant", "content": reply}]
        return reply

    def close(self) -> None:
        import llama_cpp

        self.decoder.close()
        if self.adapter is not None:
            llama_cpp.llama_adapter_lora_free(self.adapter)
            self.adapter = None
        self.llm.close()
