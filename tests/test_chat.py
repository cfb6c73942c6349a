"""edgeft chat: a context that makes no sense is refused, and a message that outgrows the context is one line while
the session goes on."""

from __future__ import annotations

import pytest

from tests.hostile import invoke, one_line_error, shown_lines
from tests.test_eval import setup  # noqa: F401  (the fixture: a llama GGUF and its eval data)

pytest.importorskip("llama_cpp")

@pytest.mark.hostile
@pytest.mark.parametrize("ctx", ["0", "-1"])
def test_chat_with_a_nonsense_context_is_refused(setup, ctx):
    one_line_error(invoke("chat", setup["model"], "--ctx", ctx), f"--ctx {ctx}: must be at least 1")


@pytest.mark.hostile
def test_chat_message_that_outgrows_the_context_is_refused_and_the_session_goes_on(setup):
    long_message = "tell me everything about the orders " * 40
    result = invoke("chat", setup["model"], "--ctx", "64", "--max-tokens", "2", input=f"{long_message}\nhi\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    errors = [line for line in shown_lines(result.output) if "Error: " in line]
    assert len(errors) == 1 and "does not fit the context of" in errors[0] and "/reset" in errors[0]
