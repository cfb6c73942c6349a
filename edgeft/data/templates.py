"""Chat templates: find a model's template and render it the way Hugging Face does, in a Jinja sandbox.

Templates come from the model folder (untrusted code from the Hub), so they run in
`jinja2.sandbox.ImmutableSandboxedEnvironment` with the same options and helpers transformers gives them
(`trim_blocks`, `lstrip_blocks`, `loopcontrols`, a non-escaping `tojson`, `raise_exception`, `strftime_now`).
Rendering here must match `tokenizer.apply_chat_template(..., tokenize=False)` byte for byte: the label mask is
computed on this text. No torch or transformers import in this module.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from convert.common.errors import EdgeftError

# The plain ChatML template (Qwen2's without the default system prompt): the fallback for base models.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Template variables HF passes from the tokenizer's special tokens.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class TemplateRenderError(EdgeftError):
    """The chat template refused the conversation (its own raise_exception) or failed to render."""


def _raise_exception(message: str) -> None:
    import jinja2.exceptions

    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes HTML characters ("<" -> "\u003c"); HF's does not, and the text must match HF's.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_template(template: str):
    """Compile once per template string (rendering 100k examples must not re-parse it)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(_strip_generation_tags(template))
    except jinja2.TemplateSyntaxError as exc:
        raise EdgeftError(f"chat template line {exc.lineno}: syntax error ({exc.message}); fix the template") from exc


def _strip_generation_tags(template: str) -> str:
    # `{% generation %}` is a transformers-only Jinja extension; the text it renders is the same without it, and
    # our mask does not rely on it, so drop the tags instead of registering the extension.
    import re

    return re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str | None] | None = None,
    tools: list | None = None,
    **extra: Any,
):
    """Render `messages` (and `tools`, the function definitions) with `template` exactly as HF's
    apply_chat_template(tokenize=False, tools=...) would: a `convert.vocab.chat_spans.ChatText`, which knows the
    characters that came from the messages, so tokenizing it never turns their text into control tokens."""
    import jinja2.exceptions

    from convert.vocab.chat_spans import render_with_spans

    compiled = compile_template(template)
    variables = {name: "" for name in SPECIAL_TOKEN_NAMES}
    variables.update({k: v for k, v in (special_tokens or {}).items() if v is not None})
    variables.update(extra)

    def render(msgs, tool_list):
        return compiled.render(messages=msgs, tools=tool_list, documents=None,
                               add_generation_prompt=add_generation_prompt, **variables)

    try:
        return render_with_spans(render, messages, tools)
    except jinja2.exceptions.TemplateError as exc:
        raise TemplateRenderError(f"chat template rejects this conversation: {exc}") from exc
    except EdgeftError as exc:  # it renders, but drops a tool call: as good as a refusal
        raise TemplateRenderError(str(exc)) from exc


def special_tokens_of(tokenizer_or_dir: Any) -> dict[str, str]:
    """The special-token strings a template may use ({{ bos_token }}...), from a HF tokenizer or a model folder."""
    if isinstance(tokenizer_or_dir, (str, Path)):
        config = _tokenizer_config(Path(tokenizer_or_dir))
        found = {name: _token_text(config.get(name)) for name in SPECIAL_TOKEN_NAMES}
    else:
        found = {name: getattr(tokenizer_or_dir, name, None) for name in SPECIAL_TOKEN_NAMES}
    return {name: value for name, value in found.items() if isinstance(value, str)}


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json stores a token either as its string or as an AddedToken dict {"content": ...}.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _tokenizer_config(model_dir: Path) -> dict:
    path = model_dir / "tokenizer_config.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgeftError(f"{path}: unreadable tokenizer config ({exc}); fix or remove the file") from exc


def template_for(model_dir_or_tokenizer: Any, default: str | None = None) -> str:
    """The chat template of a model folder (`convert.vocab.chat_template.chat_template_of`: chat_template.jinja, else
    tokenizer_config.json's, its "default" when named) or of a loaded HF tokenizer (what transformers resolved).

    Without one, return `default` when given, else raise EdgeftError saying what to do.
    """
    from convert.vocab.chat_template import chat_template_of, default_template

    if not isinstance(model_dir_or_tokenizer, (str, Path)):
        template = getattr(model_dir_or_tokenizer, "chat_template", None)
        where = getattr(model_dir_or_tokenizer, "name_or_path", None) or "the tokenizer"
        if isinstance(template, dict):  # transformers' form of named templates
            template = default_template(template, where)
    else:
        model_dir = Path(model_dir_or_tokenizer)
        if not model_dir.is_dir():
            raise EdgeftError(f"{model_dir}: not a model folder; pass the folder holding tokenizer_config.json")
        template, where = chat_template_of(model_dir), str(model_dir)
    if isinstance(template, str) and template.strip():
        return template
    if default is not None:
        return default
    raise EdgeftError(
        f"{where}: no chat template (no chat_template.jinja, none in tokenizer_config.json); "
        "add one to the model folder or pass a template file"
    )
