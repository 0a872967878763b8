"""`edge-runtime update`: the device update agent (follows the fleet's desired state) and its state."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from .common import LOCAL_BROKER, broker_options, load_device
from .output import json_option, print_fields, print_json


@click.group()
def update():
    """The device update agent: download, verify, self-test, activate, probation, commit or roll back."""


@update.command()
@broker_options
@click.option("--device-id", help="This device's id [config uplink.device_id; default: the host name].")
@click.option("--group", help="The fleet group it takes updates for [config update.group].")
@click.option(
    "--threshold",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Trusted fleet-role signatures a release and a desired state need (k of n); the higher of this and "
    "the fleet threshold set with `keys trust --role fleet --threshold`.",
)
@click.option("--daemon-url", help="Ask this daemon to reload after activation, e.g. http://127.0.0.1:8080.")
@click.option(
    "--download-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Partial downloads (default: $EDGE_RUNTIME_HOME/state/fleet/downloads).",
)
@click.option(
    "--latency-budget-ms",
    type=click.FloatRange(1),
    default=1000.0,
    show_default=True,
    help="Self-test: slowest golden example allowed.",
)
@click.option(
    "--probation-traffic",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Texts (JSONL with text, or lines) to compare the new and previous model on offline. Without it, "
    "and with --daemon-url, probation watches the daemon's live counters instead.",
)
@click.option(
    "--probation-requests",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Texts the new model must route on live traffic (or take from the traffic file) before it is judged.",
)
@click.option(
    "--probation-max-wait",
    type=click.FloatRange(1),
    default=3600.0,
    show_default=True,
    help="Live probation: seconds to wait for that many texts; with fewer, the model is kept with a note.",
)
@click.option(
    "--probation-max-increase",
    type=click.FloatRange(0, 1),
    default=0.10,
    show_default=True,
    help="Allowed rise of the escalation rate (absolute).",
)
@click.option(
    "--probation-max-agreement-drop",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="Live probation: allowed fall of the upstream's agreement with the model on samples (routing.sample_rate; "
    "absolute), once each model has 30 sample answers.",
)
@click.option("--probation-seconds", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--chunk-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True)
@click.option("--heartbeat", type=click.FloatRange(1), default=30.0, show_default=True)
@click.option(
    "--mirror-timeout",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for an HTTP(S) mirror (connect, each read) before trying the next source.",
)
def run(
    config_file,
    uplink,
    device_id,
    group,
    threshold,
    daemon_url,
    download_dir,
    latency_budget_ms,
    probation_traffic,
    probation_requests,
    probation_max_wait,
    probation_max_increase,
    probation_max_agreement_drop,
    probation_seconds,
    chunk_timeout,
    heartbeat,
    mirror_timeout,
):
    """Run the agent until SIGTERM; resumes an update a crash interrupted."""
    import logging

    from .. import paths
    from ..config import server_token
    from ..fleet.agent import Agent, AgentConfig
    from ..fleet.fetch import FetchConfig
    from ..fleet.http_fetch import MirrorConfig
    from ..fleet.mirror_access import MirrorAccess
    from ..fleet.probation import ProbationConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    device = load_device(config_file, uplink={**uplink, "device_id": device_id}, update={"group": group})
    group = device.config["update"]["group"]
    if not group:
        raise click.UsageError("no group: pass --group GROUP (or set update.group in --config)")
    config = AgentConfig(
        device_id=device.device_id,
        group=group,
        root=paths.home(),
        download_dir=download_dir,
        daemon_url=daemon_url,
        daemon_token=server_token(device.config),  # the daemon's [server] token, from the same --config
        broker=device.broker(default_url=LOCAL_BROKER),
        threshold=threshold,
        latency_budget_ms=latency_budget_ms,
        heartbeat_s=heartbeat,
        probation=ProbationConfig(
            traffic=probation_traffic,
            requests=probation_requests,
            max_escalation_increase=probation_max_increase,
            duration_s=probation_seconds,
            max_wait_s=probation_max_wait,
            max_agreement_drop=probation_max_agreement_drop,
        ),
        fetch=FetchConfig(timeout_s=chunk_timeout),
        mirror=MirrorConfig(timeout_s=mirror_timeout, access=MirrorAccess.from_config(device.config)),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        Agent(config).run(stop)
    except KeyboardInterrupt:
        pass


@update.command()
@json_option
def status(as_json):
    """This device's persisted update state (phase, release, last error). Exits 1 when it is unreadable
    (updates are then refused)."""
    from ..fleet.state import UpdateState, state_path

    state = UpdateState(state_path())
    data = state.data
    signed = (data.get("release") or {}).get("signed") or {}
    summary = {
        "state_error": state.error,
        "phase": data["phase"],
        "installed_release": data["installed_release"],
        "release": signed.get("release"),
        "target": signed.get("bundle"),
        "last_error": data["last_error"],
        "note": data.get("note"),
        "probation": data.get("probation"),
    }
    if as_json:
        print_json({**data, "release": signed or None, "state_error": state.error})
    else:
        print_fields({k: v for k, v in summary.items() if v is not None})
    if state.error:  # updates are refused until the state file is repaired
        click.get_current_context().exit(1)
