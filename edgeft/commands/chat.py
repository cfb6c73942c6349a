"""`edgeft chat`: talk to a GGUF with its embedded chat template."""

from __future__ import annotations

import click


@click.command("chat")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--lora", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="GGUF LoRA adapter applied on top of MODEL (see `edgeft convert-lora`).")
@click.option("--system", default=None, help="System prompt.")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Most new tokens per reply.")
@click.option("--ctx", "n_ctx", type=int, default=4096, show_default=True, help="Context size.")
@click.option("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice).")
def chat(model, lora, system, max_tokens, n_ctx, threads):
    """Interactive chat (greedy) with MODEL.gguf using the template embedded in it.

    Type a message and press Enter; /reset clears the conversation, /exit (or Ctrl-D) quits.

    \b
    Example:
      edgeft chat out/model-Q4_K_M.gguf
      edgeft chat base-f16.gguf --lora out/adapter.gguf --system "You are terse."
    """
    from convert.common.errors import EdgeftError
    from runtime.chat import ChatSession

    session = ChatSession(model, lora_path=lora, system=system, max_tokens=max_tokens, n_ctx=n_ctx, threads=threads)
    click.echo(f"{model}{' + ' + lora if lora else ''} — /reset to start over, /exit to quit", err=True)
    while True:
        try:
            text = click.prompt("you", prompt_suffix="> ", default="", show_default=False)
        except (EOFError, click.Abort):
            click.echo("", err=True)
            return
        if text.strip() in {"/exit", "/quit"}:
            return
        if text.strip() == "/reset":
            session.reset()
            continue
        if not text.strip():
            continue
        try:
            click.echo(session.send(text))
        except EdgeftError as exc:  # the conversation outgrew --ctx: say so and keep the session
            click.echo(f"Error: {exc} (or /reset)", err=True)
