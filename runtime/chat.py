"""A chat session over a GGUF (optionally with a GGUF LoRA adapter), the library half of `edgeft chat`."""

from __future__ import annotations

import os

from runtime.eval_settings import SettingError
from runtime.generate import chat_reply
from runtime.load import open_gguf


class ChatSession:
    """Keeps the conversation; each reply re-renders it with the embedded template and decodes greedily.

    Example: `ChatSession("model.gguf").send("Hello")`.
    """

    def __init__(self, model: str | os.PathLike, *, lora_path: str | os.PathLike | None = None,
                 system: str | None = None, max_tokens: int = 512, n_ctx: int = 4096, threads: int | None = None):
        if n_ctx < 1 or max_tokens < 1:
            setting, value = ("n_ctx", n_ctx) if n_ctx < 1 else ("max_tokens", max_tokens)
            raise SettingError(f"<{setting}> {value}: must be at least 1", setting)
        self.path = str(model)
        self.llm = open_gguf(model, n_ctx=n_ctx, threads=threads, lora_path=lora_path)
        self.system = system
        self.max_tokens = max_tokens
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str) -> str:
        """The reply to `text`; EdgeftError (conversation unchanged) when the conversation no longer fits the context."""
        messages = self.messages + [{"role": "user", "content": text}]
        reply = chat_reply(self.llm, messages, max_tokens=self.max_tokens, path=self.path).text.strip()
        self.messages = messages + [{"role": "assistant", "content": reply}]
        return reply
