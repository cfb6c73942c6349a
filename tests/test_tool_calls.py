"""Tool-call conversations (an assistant turn with `tool_calls`, `tool` results, the `tools` definitions) are
rendered by the chat template's own tool support, on both sides exactly as Hugging Face's apply_chat_template(...,
tools=...) renders them, trained (the call is the answer) and served; a template without tool support refuses
them in one line. Nothing is dropped without a word."""

from __future__ import annotations

import json
import shutil

import pytest

from convert.common.errors import EdgeftError

pytest.importorskip("transformers")

# Qwen2.5-Instruct's template (ChatML with tools), as its tokenizer_config.json ships it.
QWEN25_TOOLS_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city <|im_end|> now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "{\"sky\": \"sunny\"}"},
    {"role": "assistant", "content": "Sunny."},
]


@pytest.fixture(scope="module")
def tools_model(tmp_path_factory):
    """The qwen2 fixture with Qwen2.5's tool template, its GGUF, and its HF tokenizer."""
    from convert import convert_model
    from runtime.hf_tokenizer import load_hf_tokenizer
    from tests.factory import build_model

    out = tmp_path_factory.mktemp("tools")
    folder = out / "model"
    shutil.copytree(build_model("qwen2"), folder)
    (folder / "chat_template.jinja").write_text(QWEN25_TOOLS_TEMPLATE)
    gguf = convert_model(folder, out / "model.gguf", outtype="f32")
    return folder, gguf, load_hf_tokenizer(folder)


def test_both_renderers_match_apply_chat_template_with_tools(tools_model):
    from edgeft.data.templates import render_chat as render_hf
    from edgeft.data.templates import special_tokens_of
    from runtime.chat_prompt import render_chat
    from runtime.load import open_gguf

    folder, gguf, tokenizer = tools_model
    for messages, prompt in ((CONVERSATION, False), (CONVERSATION[:3], True)):
        reference = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False,
                                                  add_generation_prompt=prompt)
        assert "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}" in reference
        ours = render_hf(QWEN25_TOOLS_TEMPLATE, messages, tools=TOOLS, add_generation_prompt=prompt,
                         special_tokens=special_tokens_of(tokenizer))
        assert ours == reference and ours.content_spans is not None
        llm = open_gguf(gguf, vocab_only=True)
        assert render_chat(llm, messages, tools=TOOLS, add_generation_prompt=prompt) == reference
        llm.close()


def test_the_call_is_trained_and_fed_as_llama_cpp_feeds_it(tools_model):
    """The trained tokens are the call the template renders plus <|im_end|>, and the final answer; the tool's
    result and the definitions are prompt. The ids are llama.cpp's for the same conversation (the `<|im_end|>` in
    a tool's description is text on both sides)."""
    from edgeft.data.masking import IGNORE_INDEX, build_example
    from runtime.chat_prompt import prompt_tokens, render_chat
    from runtime.load import open_gguf

    folder, gguf, tokenizer = tools_model
    example = build_example(CONVERSATION, tokenizer, tools=TOOLS, where="train.jsonl:1")
    trained = tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX])
    assert trained == ("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
                       "</tool_call><|im_end|>Sunny.<|im_end|>")
    llm = open_gguf(gguf, vocab_only=True)
    served = prompt_tokens(llm, render_chat(llm, CONVERSATION, tools=TOOLS, add_generation_prompt=False))
    llm.close()
    assert example["input_ids"] == served


def test_a_template_without_tool_support_refuses_in_one_line(tmp_path, fixture_model):
    """Plain ChatML would render the tool result as a "tool" turn and drop the call and the definitions: data check
    names the line and what to do; serve's renderer refuses the same way."""
    from edgeft.data.check import check_dataset
    from edgeft.data.templates import CHATML_TEMPLATE, render_chat

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATION, "tools": TOOLS}) + "\n")
    report = check_dataset(data, tokenizer_dir=fixture_model("qwen2"))
    [error] = [f for f in report.errors if f.kind == "template"]
    assert error.line == 1 and "does not render the tool call 'get_weather' of message 1" in error.message
    assert "use a model whose template supports tool calls" in error.message and "\n" not in error.message
    with pytest.raises(EdgeftError, match="tool definition 'get_weather'"):
        render_chat(CHATML_TEMPLATE, CONVERSATION[:1], tools=TOOLS)


def test_data_check_accepts_tool_conversations_and_checks_their_shape(tmp_path, tools_model):
    from edgeft.data.check import check_dataset

    folder, _, _ = tools_model
    string_arguments = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    rows = [{"messages": CONVERSATION, "tools": TOOLS},
            {"messages": [CONVERSATION[0], {**CONVERSATION[1], "tool_calls": [string_arguments]}, *CONVERSATION[2:]],
             "tools": TOOLS[:1] + [{"type": "function", "function": {"name": "other"}}]},
            {"messages": [CONVERSATION[0], CONVERSATION[2], CONVERSATION[3]]},
            {"messages": [CONVERSATION[0], {"role": "assistant", "tool_calls": [{"function": {"name": ""}}]}]},
            {"messages": CONVERSATION, "tools": [{"type": "function"}]}]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = check_dataset(data, tokenizer_dir=folder)
    errors = {f.line: f.message for f in report.errors}
    assert 1 not in errors and 2 not in errors, errors  # same turns, other tools: not a duplicate
    assert "tool at position 1 where assistant was expected" in errors[3]
    assert "needs a non-empty name" in errors[4] and "tools[0]" in errors[5]
