"""`edge-runtime upstream`: answer escalations from devices with a big bundle (a shared-subscription worker)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

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
@click.option(
    "--dataset",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep every answered escalation in this directory (append-only JSONL: `edge-runtime flywheel export`).",
)
@click.option(
    "--dataset-max-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=64.0,
    show_default=True,
    help="Start a new dataset file when the current one would grow past this size.",
)
def upstream(
    bundle,
    config_file,
    uplink,
    group,
    device_pattern,
    client_id,
    threads,
    allow_unsigned,
    dataset,
    dataset_max_mb,
    **old,
):
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
    model = device.load_model(bundle, allow_unsigned=allow_unsigned)
    writer = None
    if dataset is not None:
        from ..flywheel import DatasetWriter

        try:
            writer = DatasetWriter(dataset, max_bytes=max(1, int(dataset_max_mb * 1024 * 1024)))
        except OSError as error:
            raise click.ClickException(f"--dataset {dataset}: {error.strerror or error}") from None
    worker = Worker(
        broker,
        model_responder(model),
        group=group,
        device_pattern=device_pattern,
        client_id=client_id,
        dataset=writer,
        teacher=(model.name, model.version),
    )
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
        if writer is not None:
            writer.close()
    errors = dict(worker.link.callback_errors)  # what the worker did not foresee, dropped by the Link's guard
    stats = dict(worker.stats) | ({"callback_errors": errors} if errors else {})
    if writer is not None:
        stats["dataset"] = dict(writer.stats)
    click.echo(f"stopped: {stats}", err=True)
