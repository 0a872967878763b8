"""The daemon's life: load, listen, READY=1, serve (watchdog pings, SIGHUP reloads), SIGTERM drains.

Order matters for systemd: READY=1 only once the model is loaded and the sockets listen; STOPPING=1
as soon as SIGTERM arrives; the listeners close first, in-flight requests finish (up to
server.drain_timeout_s), then the batcher, the uplink and the outbox stop; the exit code is 0.

The edge: idle connections, and clients slow to send their headers, are closed after
server.keepalive_timeout_s; beyond server.max_connections a new connection gets a 503 JSON answer and
is closed (counted as edge_runtime_rejected_total{reason="connections"}).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal

from aiohttp import web

from ..config import server_token
from ..errors import ConfigError
from .app import build_app
from .inputs import Limits
from .notify import Notifier

log = logging.getLogger(__name__)


def run(config) -> int:
    from .service import Service

    notifier = Notifier()
    notifier.status("loading the model")
    service = Service(config)
    engine = service.swap.current
    log.info("model loaded", extra={"model": engine.name, "version": engine.version, "config": config.source})
    try:
        return asyncio.run(_serve(service, config, notifier))
    finally:
        notifier.close()


LOOPBACK = ("127.0.0.1", "::1", "localhost")
TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: 53\r\n\r\n"
    b'{"error": "busy: too many connections, retry later"}\n'
)


def cap_connections(server: web.Server, limit: int, on_refused) -> None:
    """Beyond `limit` open connections, answer a new one 503 and close it. aiohttp has no such option;
    its Server registers each connection in connection_made, so the cap wraps that one method."""
    admit = server.connection_made

    def connection_made(handler, transport) -> None:
        admit(handler, transport)
        if len(server.connections) > limit:
            on_refused()
            transport.write(TOO_MANY)
            # next tick: the handler's task starts first, then sees the close (closing now trips its assert)
            asyncio.get_running_loop().call_soon(handler.force_close)

    server.connection_made = connection_made


async def _listen(runner: web.AppRunner, server: dict) -> list[str]:
    sites = []
    if server["tcp"]:
        sites.append(
            (web.TCPSite(runner, server["host"], server["port"], backlog=1024), f"{server['host']}:{server['port']}")
        )
    if server["unix_socket"]:
        _remove_stale_socket(server["unix_socket"])
        sites.append((web.UnixSite(runner, server["unix_socket"]), server["unix_socket"]))
    for site, where in sites:
        try:
            await site.start()
        except OSError as error:
            reason = "address already in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
            raise ConfigError(f"cannot listen on {where}: {reason}") from None
    return [where for _, where in sites]


def _remove_stale_socket(path: str) -> None:
    import stat

    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left by a daemon that was killed
    except FileNotFoundError:
        pass


def _status_line(service, where: list[str]) -> str:
    engine = service.swap.current
    return f"serving {engine.name}@{engine.version} on {', '.join(where)}"


async def _watchdog(service, notifier: Notifier) -> None:
    while True:
        await asyncio.sleep(notifier.watchdog_s)
        if service.batcher.alive:  # a dead worker means no pings: systemd restarts us
            notifier.watchdog()


async def _unload_idle_tagger(service, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        service.unload_idle_tagger()


async def _serve(service, config, notifier: Notifier) -> int:
    server = config["server"]
    loop = asyncio.get_running_loop()
    token = server_token(config)
    if token is None and server["tcp"] and server["host"] not in LOOPBACK:
        log.warning("listening on %s without a token: /v1/admin/reload and /v1/requests are open", server["host"])
    runner = web.AppRunner(
        build_app(service, Limits.from_config(config), token, server["protect_status"]),
        handle_signals=False,
        access_log=logging.getLogger("aiohttp.access") if server["access_log"] else None,
        shutdown_timeout=server["drain_timeout_s"],
        keepalive_timeout=server["keepalive_timeout_s"],
    )
    await runner.setup()
    cap_connections(runner.server, server["max_connections"], service.metrics.rejected.labels("connections").inc)
    service.start(loop)
    try:
        where = await _listen(runner, server)
    except ConfigError:
        await runner.cleanup()
        service.stop()
        raise
    stop = asyncio.Event()
    reloading: set[asyncio.Task] = set()

    async def reload() -> None:
        notifier.reloading()
        result = await service.reload()
        log.info("reload: %s", result["result"], extra={k: v for k, v in result.items() if k != "result"})
        notifier.ready(_status_line(service, where))

    def on_hup() -> None:
        task = loop.create_task(reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    watchdog = loop.create_task(_watchdog(service, notifier)) if notifier.watchdog_s else None
    idle_s = config["privacy"]["tagger_idle_unload_s"]
    # checked a few times per idle period, so a tagger is unloaded at most a quarter period late
    unloader = loop.create_task(_unload_idle_tagger(service, min(30.0, idle_s / 4))) if idle_s > 0 else None
    notifier.ready(_status_line(service, where))
    log.info("ready", extra={"listen": where, "pid": os.getpid()})
    await stop.wait()

    notifier.stopping()
    log.info("stopping: draining in-flight requests")
    service.draining = True
    await runner.cleanup()  # closes the listeners, waits for in-flight handlers
    for task in (watchdog, unloader):
        if task:
            task.cancel()
    for task in list(reloading):
        await task
    await asyncio.to_thread(service.stop)
    log.info("stopped")
    return 0
