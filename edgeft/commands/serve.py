"""`edgeft serve`: one base GGUF, many LoRA adapter GGUFs, an OpenAI-compatible API."""

from __future__ import annotations

import click


def parse_adapters(values: tuple[str, ...]) -> dict[str, str]:
    """`NAME=PATH` pairs -> {name: path}; a bare PATH is named after its file's stem."""
    from pathlib import Path

    from convert.common.errors import EdgeftError

    adapters: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).stem, value
        if not name or not path:
            raise EdgeftError(f"--adapter {value!r}: expected NAME=ADAPTER.gguf")
        if name in adapters:
            raise EdgeftError(f"--adapter {name}: the name is given twice; each adapter needs its own name")
        adapters[name] = path
    return adapters


@click.command("serve")
@click.argument("base", type=click.Path(dir_okay=False, path_type=str))
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=ADAPTER.gguf",
              help="A GGUF LoRA adapter (see `edgeft convert-lora`) served as model NAME; repeat for more.")
@click.option("--name", "base_name", default=None, help="Model id of the base itself (default: BASE's file stem).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--api-key", envvar="EDGEFT_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` on every request (or set EDGEFT_API_KEY).")
@click.option("--ctx", "n_ctx", type=click.IntRange(min=16), default=4096, show_default=True,
              help="Context size (prompt + answer), split evenly among the --parallel slots.")
@click.option("--parallel", type=click.IntRange(min=1), default=4, show_default=True,
              help="Requests decoded at once (slots); more wait in the queue.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: llama.cpp's).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Largest max_tokens a request may ask for (and the default when it asks for none).")
@click.option("--max-body", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
              help="Largest request body, in bytes.")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests that may wait for the model; more get 503.")
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds that requests in flight get to finish after SIGTERM.")
def serve(base, adapters, base_name, host, port, api_key, n_ctx, parallel, threads, max_tokens, max_body, max_queue,
          shutdown_timeout):
    """Serve BASE.gguf and its adapters over an OpenAI-compatible API (/v1/chat/completions, /v1/completions,
    /v1/models, /health). The base is loaded once; a request picks an adapter by its `model` field.

    \b
    Example:
      edgeft serve base-Q8_0.gguf --adapter sql=out/sql.gguf --adapter faq=out/faq.gguf
      curl localhost:8080/v1/chat/completions -d '{"model": "sql", "messages": [{"role": "user", "content": "hi"}]}'
    """
    from runtime.serve import serve as run_server
    from runtime.serve.protocol import Limits, check_api_key

    import os

    # Before the model loads: a key no client can send is a mistake, not a setting. click reads an empty
    # EDGEFT_API_KEY as unset, which would serve without a key while the user believes one is set.
    if api_key is None and os.environ.get("EDGEFT_API_KEY") is not None:
        check_api_key(os.environ["EDGEFT_API_KEY"], option="EDGEFT_API_KEY")
    check_api_key(api_key)
    limits = Limits(max_tokens=max_tokens, max_body_bytes=max_body, max_queue=max_queue)
    run_server(base, parse_adapters(adapters), host=host, port=port, api_key=api_key, base_name=base_name,
               n_ctx=n_ctx, threads=threads, limits=limits, shutdown_timeout=shutdown_timeout, parallel=parallel)
