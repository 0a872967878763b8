"""`edge-runtime upstream`: answer escalations from devices with a big bundle (a shared-subscription worker)."""

from __future__ import annotations

import signal
import threading

import click

from .common import broker_options, load_device

# The spellings of earlier releases: still accepted for one release, with a warning.
DEPRECATED_OPTIONS = {"cafile": "--tls-ca", "cert": "--tls-cert", "key": "--tls-key"}
UPLINK_KEYS = {"cafile": "ca_file", "cert": "cert_file", "key": "key_file"}


def _deprecated(name: str):
    return click.option(f"--{name}", f"old_{name}", type=click.Path(exists=True, dir_okay=False), hidden=True)


@click.command()
@click.option("--bundle", "-b", required=True, metavar="PATH|NAME[@VERSION]", help="The (big) bundle that answers.")
@broker_options
@_deprecated("cafile")
@_deprecated("cert")
@_deprecated("key")
@click.option(
    "--group", default="workers", show_default=True, help="Shared-subscription group: workers split the load."
)
@click.option("--device-pattern", default="+", show_default=True, help="Which device ids to serve (MQTT topic level).")
@click.option("--client-id", help="MQTT client id (default: worker-<host>-<pid>).")
@click.option("--threads", type=click.IntRange(0, 256), help="onnxruntime intra-op threads (0: one per core).")
@click.option("--allow-unsigned", is_flag=True, help="Developers only: accept an unsigned bundle.")
def upstream(bundle, config_file, uplink, group, device_pattern, client_id, threads, allow_unsigned, **old):
    """Answer escalations with BUNDLE until interrupted (start more to scale out)."""
    from ..worker import Worker, model_responder

    if not device_pattern or "/" in device_pattern or "#" in device_pattern:
        raise click.BadParameter("one topic level: a device id or +", param_hint="--device-pattern")
    if "/" in group or "+" in group or "#" in group:
        raise click.BadParameter("no / + # in a group name", param_hint="--group")
    for name, new in DEPRECATED_OPTIONS.items():
        if old[f"old_{name}"]:
            click.echo(f"warning: --{name} is deprecated and goes after this release: use {new}", err=True)
            uplink[UPLINK_KEYS[name]] = uplink[UPLINK_KEYS[name]] or old[f"old_{name}"]
    device = load_device(config_file, uplink=uplink, server={"threads": threads})
    broker = device.broker()
    if broker is None:
        raise click.UsageError("no broker: pass --broker URL (or set uplink.broker in --config)")
    responder = model_responder(device.load_model(bundle, allow_unsigned=allow_unsigned))
    worker = Worker(broker, responder, group=group, device_pattern=device_pattern, client_id=client_id)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    worker.start()
    try:
        worker.wait_ready(30)
        click.echo(f"answering {worker.subscription} on {broker.host}:{broker.port} as {worker.name}", err=True)
        done.wait()
    finally:
        worker.stop()
    errors = dict(worker.link.callback_errors)  # what the worker did not foresee, dropped by the Link's guard
    click.echo(f"stopped: {dict(worker.stats) | ({'callback_errors': errors} if errors else {})}", err=True)
