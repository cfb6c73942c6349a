"""`edgeft serve`: one base GGUF in memory, many LoRA adapter GGUFs over it, an OpenAI-compatible HTTP API.

    from runtime.serve import serve
    serve("base.gguf", {"sql": "sql-adapter.gguf"}, port=8080)

engine.py holds the model, its adapters and the batching decoder (runtime.decode); worker.py runs its loop; protocol.py checks OpenAI
request bodies; app.py is the Starlette app; this module runs it under uvicorn.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import threading

from convert.common.errors import EdgeftError
from runtime.eval_settings import SettingError
from runtime.serve.protocol import Limits

log = logging.getLogger("edgeft.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(base: str | os.PathLike, adapters: dict[str, str | os.PathLike] | None = None, *,
          host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None, base_name: str | None = None,
          n_ctx: int = 4096, threads: int | None = None, limits: Limits | None = None,
          shutdown_timeout: float = 30.0, parallel: int = 4) -> None:
    """Load the model and adapters, then serve until SIGTERM/SIGINT; returns normally (exit status 0).

    On the signal uvicorn stops accepting connections and lets the requests in flight finish (up to
    `shutdown_timeout` seconds, then they are cancelled); queued requests that never started get a 503.
    """
    try:
        import uvicorn

        from runtime.serve.app import build_app
    except ImportError as exc:
        raise EdgeftError(f"edgeft serve needs the serve extra ({exc.name} is missing): "
                          "pip install 'edgeft[serve]'") from exc
    from runtime.serve.engine import Engine

    if not 0 <= port <= 65535:
        raise SettingError(f"<port> {port}: must be from 0 to 65535", "port")
    if not is_loopback(host) and not api_key:
        print(f"warning: serving on {host} without --api-key: anyone who can reach this port can use the models",
              file=sys.stderr)
    _keep_malloc_threshold_fixed()
    engine = Engine(base, adapters or {}, base_name=base_name, n_ctx=n_ctx, threads=threads, parallel=parallel)
    try:
        app = build_app(engine, api_key=api_key, limits=limits)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=shutdown_timeout, lifespan="on")
        server = _make_server(config, f"serving {', '.join(engine.names)}")
        try:
            server.run()
        except SystemExit:  # uvicorn exits (status 3) when it cannot bind; its own log line says why
            pass
        if not server.started:
            raise EdgeftError(f"could not serve on {host}:{port} (is the port in use?)")
    finally:
        engine.close()


def _keep_malloc_threshold_fixed() -> None:
    """Switching adapters makes llama.cpp re-reserve its compute buffers (a new graph), freeing and allocating a
    few MiB each time. glibc raises its mmap threshold past the size of every large block freed, so from the second
    switch on those buffers come from the heap and stay resident after free: measured +1-3 MiB per adapter used and
    still growing after every round (tests/bench/bench_serve.py). Setting M_MMAP_THRESHOLD explicitly (128 KiB,
    glibc's default) turns that adjustment off: large buffers are mmapped and go back to the OS when freed."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD from <malloc.h>
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        pass


def _make_server(config, banner: str):
    """A uvicorn.Server that prints `banner` once the socket is bound and returns normally after SIGTERM/SIGINT.

    uvicorn re-raises a captured signal after shutting down, so that the default handler kills the process with it
    (exit status 143 for SIGTERM). A server that has shut down cleanly should exit 0, so while it runs the
    handlers it restores (and the re-raised signal finds) are a no-op."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                bound = [sock.getsockname()[:2] for server in self.servers for sock in server.sockets]
                host, port = bound[0] if bound else (self.config.host, self.config.port)
                # the bound port, not the asked one: `--port 0` picks a free port and tells it here
                print(f"{banner} on http://{host}:{port}/v1", file=sys.stderr, flush=True)

        def run(self, sockets=None):
            if threading.current_thread() is not threading.main_thread():
                return super().run(sockets)
            previous = {sig: signal.signal(sig, _after_shutdown) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                return super().run(sockets)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)


def _after_shutdown(sig, frame) -> None:
    log.info("%s: already shut down", signal.Signals(sig).name)
