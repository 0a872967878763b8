"""`edge-runtime upstream`: answer escalations from devices with a big bundle (a shared-subscription worker)."""

from __future__ import annotations

import os
import signal
import threading

import click


def _broker(url, cafile, cert, key, username):
    from ..errors import ConfigError
    from ..mqtt import BrokerConfig

    try:
        return BrokerConfig.from_url(
            url,
            ca_file=cafile,
            cert_file=cert,
            key_file=key,
            username=username,
            password=os.environ.get("EDGE_RUNTIME_MQTT_PASSWORD"),
            tls=True if (cert or cafile) else None,
        )
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--broker") from None


def bundle_responder(bundle: str, threads: int = 0, allow_unsigned: bool = False):
    """Responder answering with the bundle's prediction for the request's text. When the bundle has a
    postprocess.combine section and the request's prediction carries the device's top-k, the label and score
    are the combined ones (edge_runtime/combine.py) and the answer says "combined": true."""
    import edge_runtime

    from ..combine import Combination, combine

    model = edge_runtime.load(bundle, threads=threads, allow_unsigned=allow_unsigned)
    combination = Combination.from_manifest(model.manifest.raw) if model.task == "text-classification" else None

    def respond(request: dict) -> dict:
        top_k = (request.get("prediction") or {}).get("top_k")
        if combination is None or not top_k:
            prediction = model.predict([request["text"]])[0]
            return prediction.to_dict() if hasattr(prediction, "to_dict") else dict(prediction)
        from ..postprocess import classify

        logits = model.logits([request["text"]])
        answer = classify(logits, model.classification)[0].to_dict()  # the upstream's own top-k, margin, entropy
        answer["label"], answer["score"] = combine(combination, top_k, logits[0], model.labels)
        answer["combined"] = True
        return answer

    return respond


@click.command()
@click.option("--bundle", "-b", required=True, metavar="PATH|NAME[@VERSION]", help="The (big) bundle that answers.")
@click.option("--broker", "broker_url", required=True, metavar="URL", help="mqtt://host:port or mqtts://host:port")
@click.option(
    "--group", default="workers", show_default=True, help="Shared-subscription group: workers split the load."
)
@click.option("--device-pattern", default="+", show_default=True, help="Which device ids to serve (MQTT topic level).")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False), help="CA that signed the broker's certificate.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate (CN = ACL username).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="Client certificate's private key.")
@click.option("--username", help="MQTT username (password from $EDGE_RUNTIME_MQTT_PASSWORD).")
@click.option("--client-id", help="MQTT client id (default: worker-<host>-<pid>).")
@click.option("--threads", type=click.IntRange(0, 256), default=0, show_default=True)
@click.option("--allow-unsigned", is_flag=True, help="Developers only: accept an unsigned bundle.")
def upstream(
    bundle, broker_url, group, device_pattern, cafile, cert, key, username, client_id, threads, allow_unsigned
):
    """Answer escalations with BUNDLE until interrupted (start more to scale out)."""
    from ..worker import Worker

    if not device_pattern or "/" in device_pattern or "#" in device_pattern:
        raise click.BadParameter("one topic level: a device id or +", param_hint="--device-pattern")
    if "/" in group or "+" in group or "#" in group:
        raise click.BadParameter("no / + # in a group name", param_hint="--group")
    config = _broker(broker_url, cafile, cert, key, username)
    responder = bundle_responder(bundle, threads, allow_unsigned)
    worker = Worker(config, responder, group=group, device_pattern=device_pattern, client_id=client_id)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    worker.start()
    try:
        worker.wait_ready(30)
        click.echo(f"answering {worker.subscription} on {config.host}:{config.port} as {worker.name}", err=True)
        done.wait()
    finally:
        worker.stop()
    click.echo(f"stopped: {dict(worker.stats)}", err=True)
