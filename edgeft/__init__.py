"""edgeft: fine-tune an open-weight LLM and ship one GGUF you can trust.

Importing this package must stay cheap: torch, transformers and peft are imported inside the functions that
need them, so `edgeft --help` and the laptop-only install (no `train` extra) work.
"""

__version__ = "0.1.0"
