"""`edge-runtime serve`: the device daemon (HTTP: KServe V2 + /v1, dynamic batching, hot swap)."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="TOML config (default: /etc/edge-runtime/config.toml when it exists).",
)
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="TCP port (default 8080).")
@click.option("--unix-socket", metavar="PATH", help="Also listen on this Unix socket.")
@click.option("--max-batch", type=int, help="Most texts per inference run (1 = no batching).")
@click.option("--threads", type=int, help="onnxruntime intra-op threads (0 = one per core).")
@click.option(
    "--max-memory-mb",
    type=int,
    help="Cap the batch so the daemon's resident memory stays under this many MB (measured at start).",
)
def serve(config_file, host, port, unix_socket, max_batch, threads, max_memory_mb):
    """Serve the active model of $EDGE_RUNTIME_HOME over HTTP until SIGTERM (SIGHUP reloads it)."""
    from .. import config
    from ..server import daemon, logs

    settings = config.load(
        config_file,
        cli={
            "server": {"host": host, "port": port, "unix_socket": unix_socket, "threads": threads},
            "batching": {"max_batch": max_batch, "max_memory_mb": max_memory_mb},
        },
    )
    logs.setup(settings["logging"]["level"])
    return daemon.run(settings)
