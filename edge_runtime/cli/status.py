"""`edge-runtime status`: what the running daemon reports at GET /v1/status."""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlsplit

import click

from .output import fail, json_option, print_fields, print_json


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def fetch_status(url: str | None, unix_socket: str | None, timeout: float = 5.0, token: str | None = None) -> dict:
    if unix_socket:
        connection, where = _UnixConnection(unix_socket, timeout), unix_socket
    else:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise click.BadParameter("must look like http://host:port", param_hint="--url")
        connection, where = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout), url
    try:
        connection.request("GET", "/v1/status", headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise ConnectionError(f"no daemon answering at {where}: {reason}") from None
    finally:
        connection.close()
    if response.status == 401:
        raise ConnectionError(f"{where}: /v1/status needs the daemon's token: pass --config with its [server] token")
    if response.status != 200:
        raise ConnectionError(f"{where}: /v1/status answered HTTP {response.status}")
    return json.loads(body)


@click.command()
@click.option("--url", help="The daemon's base URL (default: from the config, http://127.0.0.1:8080).")
@click.option("--unix-socket", metavar="PATH", help="Talk to the daemon over this Unix socket.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Read host/port and the token from this config (default: /etc/edge-runtime/config.toml if present).",
)
@json_option
def status(url, unix_socket, config_file, as_json):
    """Model, version, uptime, queue, counters, kernels and outbox of the running daemon."""
    from .. import config

    settings = config.load(config_file)
    if not url and not unix_socket:
        server = settings["server"]
        host = "127.0.0.1" if server["host"] in ("0.0.0.0", "::", "") else server["host"]
        url = f"http://{host}:{server['port']}"
    try:
        data = fetch_status(url, unix_socket, token=config.server_token(settings))
    except ConnectionError as error:
        fail(str(error), as_json)
    if as_json:
        print_json(data)
        return
    model = data["model"]
    print_fields(
        {
            "model": f"{model['name']}@{model['version']} (release {model['release']})",
            "pid": data["pid"],
            "uptime_s": data["uptime_s"],
            "kernels": data["kernels"],
            "queue": data["queue"],
            "predictions": data["counters"]["predictions"],
            "rejected": data["counters"]["rejected"],
            "reloads": data["counters"]["reloads"],
            "escalation_rate": round(data["escalation_rate"], 4),
            "outbox": data["outbox"],  # with its state: ok, recovered (moved aside) or unavailable
            "uplink": data["uplink"] or "offline (outbox only)",
            "privacy": _privacy_line(data["privacy"]),
        }
    )


def _privacy_line(privacy: dict) -> str:
    tagger = privacy["tagger"] or "no PII tagger"
    if privacy.get("unavailable"):
        return f"{tagger}; escalations kept local: {privacy['unavailable']}"
    return f"{tagger}; escalations allowed"
