"""The daemon's configuration: TOML file < EDGE_RUNTIME_<SECTION>_<KEY> environment < command line.

Every key is declared once in SCHEMA with its type, default and allowed range, so `config check`
can name the offending key: "config.toml: server.port: must be an integer 1-65535".
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError
from .escalation import check_device_id
from .redaction import KINDS as PII_KINDS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/edge-runtime/config.toml")
ENV_PREFIX = "EDGE_RUNTIME_"
# Names of earlier releases, still read (with a warning) for one release: every setting now has one
# environment name, EDGE_RUNTIME_<SECTION>_<KEY>.
DEPRECATED_ENV = {
    "EDGE_RUNTIME_BROKER": ("uplink", "broker"),
    "EDGE_RUNTIME_DEVICE_ID": ("uplink", "device_id"),
    "EDGE_RUNTIME_DEVICE_GROUP": ("update", "group"),
}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Key:
    kind: type  # int, float, str, bool or list (of strings)
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""

    def describe(self) -> str:
        names = {
            int: "an integer",
            float: "a number",
            str: "a string",
            bool: "true or false",
            list: "a list of strings",
        }
        text = names[self.kind]
        if self.low is not None and self.high is not None:
            text += f" {self.low:g}-{self.high:g}"
        elif self.low is not None:
            text += f" >= {self.low:g}"
        return text


SCHEMA: dict[str, dict[str, Key]] = {
    "server": {
        "host": Key(str, "127.0.0.1", help="address to listen on (loopback by default)"),
        "port": Key(int, 8080, 1, 65535, "TCP port"),
        "unix_socket": Key(str, "", help="also listen on this Unix socket path ('' = no)"),
        "threads": Key(int, 0, 0, 256, "onnxruntime intra-op threads (0 = one per core)"),
        "request_timeout_ms": Key(float, 5000.0, 1, 600_000, "deadline of one request (504 after)"),
        "drain_timeout_s": Key(float, 30.0, 0, 3600, "SIGTERM: how long in-flight requests may finish"),
        "body_timeout_s": Key(float, 10.0, 0.1, 3600, "how long a client may take to send its body"),
        "max_body_bytes": Key(int, 1 << 20, 1024, 64 << 20, "largest request body (413 above)"),
        "max_text_bytes": Key(int, 8192, 1, 1 << 20, "largest text, UTF-8 bytes (413 above)"),
        "max_texts": Key(int, 64, 1, 4096, "most texts in one request (413 above)"),
        "access_log": Key(bool, False, help="log every request (method, path, status; never the body)"),
        "tcp": Key(bool, True, help="listen on host:port (false: on unix_socket only)"),
        "token": Key(str, "", help="bearer token for /v1/admin/* and /v1/requests/{id} ('' = none; see token_file)"),
        "token_file": Key(str, "", help="file holding the bearer token (keep it 0600; preferred over token)"),
        "protect_status": Key(bool, False, help="also require the token for /metrics and /v1/status"),
        "keepalive_timeout_s": Key(
            float, 15.0, 0.1, 3600, "close a connection idle this long, or slower than this to send its headers"
        ),
        "max_connections": Key(int, 256, 1, 65536, "open connections at once (more: 503 and closed, counted)"),
    },
    "batching": {
        "max_batch": Key(int, 32, 1, 1024, "most texts per inference run (1 = batching off)"),
        "max_delay_ms": Key(float, 2.0, 0, 1000, "how long a batch may wait to fill up"),
        "max_queue": Key(int, 1024, 1, 1_000_000, "texts admitted at once (503 + Retry-After above)"),
        "workers": Key(int, 1, 1, 64, "inference runs at once, each on server.threads intra-op threads"),
        "max_memory_mb": Key(
            int, 0, 0, 1_000_000, "cap the batch so the daemon's resident memory stays under this (0 = no cap)"
        ),
    },
    "routing": {
        "min_confidence": Key(float, -1.0, -1, 1, "override the bundle's threshold (-1 = bundle's)"),
        "min_margin": Key(float, -1.0, -1, 1, "override the bundle's threshold (-1 = bundle's)"),
        "max_entropy": Key(float, -1.0, -1, 1, "override the bundle's threshold (-1 = bundle's)"),
        "max_ood": Key(float, -1.0, -1, 1, "override the bundle's out-of-scope threshold (-1 = bundle's)"),
        "budget": Key(float, -1.0, -1, 1, "max share of escalations (-1 = bundle's)"),
        "private_label_floor": Key(
            float, -1.0, -1, 1, "a private label this probable in the top-k keeps the text local (-1 = bundle's, 0.05)"
        ),
        "sample_rate": Key(
            float, -1.0, -1, 1, "share of confident texts also sent upstream as a sample, answered locally (-1 = none)"
        ),
    },
    "uplink": {
        "broker": Key(str, "", help="mqtt://host:port or mqtts://host:port ('' = offline: outbox only)"),
        "device_id": Key(str, "", help="this device's id in MQTT topics (default: the host name)"),
        "ca_file": Key(str, "", help="CA that signed the broker's certificate"),
        "cert_file": Key(str, "", help="client certificate"),
        "key_file": Key(str, "", help="client certificate's private key"),
        "username": Key(str, "", help="MQTT username (password: $EDGE_RUNTIME_MQTT_PASSWORD)"),
        "deadline_ms": Key(float, 2000.0, 0, 600_000, "wait this long for an upstream answer, then defer"),
    },
    "update": {
        "group": Key(str, "", help="the fleet group this device takes model updates for (edge-runtime update run)"),
        "mirror_ca_file": Key(
            str, "", help="CA file trusted for https:// mirrors besides the system trust store ('' = system only)"
        ),
        "mirror_credentials": Key(
            list, [], help="ORIGIN=FILE: send FILE's bearer token or user:password to that mirror origin only"
        ),
    },
    "privacy": {
        "tagger": Key(str, "pii-tagger-minilm", help="PII tagger bundle for names and addresses ('' = none)"),
        "require_tagger": Key(
            bool, True, help="escalations stay local while the tagger is not loaded (false: send with the scanner only)"
        ),
        "tagger_lazy": Key(
            bool, True, help="the daemon loads the tagger on the first escalation that needs it, not at start"
        ),
        "tagger_idle_unload_s": Key(
            float, 300.0, 0, 86_400, "a lazily loaded tagger is unloaded after this many seconds unused (0: never)"
        ),
        "refuse": Key(list, [], help="PII kinds whose texts never leave the device (escalation refused)"),
        "drop": Key(list, [], help="PII kinds removed without a placeholder mapping"),
    },
    "logging": {
        "level": Key(str, "info", help="debug, info, warning or error"),
    },
}
LEVELS = ("debug", "info", "warning", "error")


class Config(dict):
    """{section: {key: value}} with every key present; `source` names where it came from."""

    def __init__(self, values: dict, source: str):
        super().__init__(values)
        self.source = source


def defaults() -> dict:
    return {section: {key: spec.default for key, spec in keys.items()} for section, keys in SCHEMA.items()}


def _check(where: str, dotted: str, spec: Key, value):
    problem = ConfigError(f"{where}: {dotted}: must be {spec.describe()}")
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise problem
        return value
    if spec.kind is list:
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise problem
        return value
    if spec.kind is str:
        if not isinstance(value, str):
            raise problem
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise problem
    if spec.kind is int and not isinstance(value, int):
        raise problem
    if isinstance(value, float) and not math.isfinite(value):
        raise problem
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise problem
    return spec.kind(value)


def _merge(values: dict, overrides: Mapping, where: str) -> None:
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: must be a table of sections")
    for section, table in overrides.items():
        if section not in SCHEMA:
            raise ConfigError(f"{where}: [{section}]: unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: {section}: must be a table")
        for key, value in table.items():
            spec = SCHEMA[section].get(key)
            if spec is None:
                raise ConfigError(f"{where}: {section}.{key}: unknown key (known: {', '.join(SCHEMA[section])})")
            values[section][key] = _check(where, f"{section}.{key}", spec, value)


def _parse_env(text: str, spec: Key):
    if spec.kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return text
    if spec.kind in (int, float):
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text
    if spec.kind is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def env_overrides(environ: Mapping[str, str] | None = None) -> dict:
    """EDGE_RUNTIME_SERVER_PORT=9000 -> {"server": {"port": 9000}}; other variables are ignored."""
    environ = os.environ if environ is None else environ
    found: dict[str, dict] = {}
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            name = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
            if name in environ:
                found.setdefault(section, {})[key] = _parse_env(environ[name], spec)
    for old, (section, key) in DEPRECATED_ENV.items():
        if old in environ and key not in found.get(section, {}):
            new = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
            log.warning("%s is deprecated and will be ignored after this release: set %s", old, new)
            found.setdefault(section, {})[key] = _parse_env(environ[old], SCHEMA[section][key])
    return found


def read_file(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path.name}: not valid TOML ({error})") from None


def default_file() -> Path | None:
    explicit = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if explicit:
        return Path(explicit)
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else None


def load(
    path: str | Path | None = None, cli: Mapping | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Defaults, then the file (`path`, else $EDGE_RUNTIME_CONFIG, else /etc/edge-runtime/config.toml
    when it exists), then the environment, then `cli` ({section: {key: value}}, None values skipped)."""
    values = defaults()
    path = Path(path) if path else default_file()
    if path is not None:
        _merge(values, read_file(path), path.name)
    _merge(values, env_overrides(environ), "environment")
    if cli:
        _merge(values, {s: {k: v for k, v in t.items() if v is not None} for s, t in cli.items()}, "command line")
    _validate_together(values, path.name if path else "config")
    return Config(values, str(path) if path else "defaults")


def _validate_together(values: dict, where: str) -> None:
    if values["logging"]["level"] not in LEVELS:
        raise ConfigError(f"{where}: logging.level: must be one of {', '.join(LEVELS)}")
    if values["batching"]["max_queue"] < values["server"]["max_texts"]:
        raise ConfigError(
            f"{where}: batching.max_queue: must be at least server.max_texts ({values['server']['max_texts']})"
        )
    server = values["server"]
    if not server["tcp"] and not server["unix_socket"]:
        raise ConfigError(f"{where}: server.tcp: false needs server.unix_socket (nowhere to listen)")
    if server["token"] and server["token_file"]:
        raise ConfigError(f"{where}: server: set token or token_file, not both")
    if server["protect_status"] and not (server["token"] or server["token_file"]):
        raise ConfigError(f"{where}: server.protect_status: needs server.token or server.token_file")
    if server["token_file"]:
        server_token(values, where)  # readable and not empty, or a one-line reason now
    uplink = values["uplink"]
    if uplink["broker"]:
        from .mqtt import BrokerConfig

        try:
            BrokerConfig.from_url(uplink["broker"])
        except ConfigError as error:
            raise ConfigError(f"{where}: uplink.broker: {error}") from None
        for key in ("ca_file", "cert_file", "key_file"):
            if uplink[key] and not Path(uplink[key]).is_file():
                raise ConfigError(f"{where}: uplink.{key}: {uplink[key]}: no such file")
    if uplink["device_id"]:
        try:
            check_device_id(uplink["device_id"])
        except InputError as error:
            raise ConfigError(f"{where}: uplink.device_id: {error}") from None
    if values["update"]["mirror_ca_file"] or values["update"]["mirror_credentials"]:
        from .fleet.mirror_access import MirrorAccess, MirrorAccessError

        try:
            MirrorAccess.from_config(values).check()  # the CA loads, every credentials file is private and reads
        except MirrorAccessError as error:
            raise ConfigError(f"{where}: {error}") from None
    privacy = values["privacy"]
    for key in ("refuse", "drop"):
        unknown = [kind for kind in privacy[key] if kind not in PII_KINDS]
        if unknown:
            raise ConfigError(
                f"{where}: privacy.{key}: unknown PII kind {unknown[0]!r} (known: {', '.join(PII_KINDS)})"
            )
    both = set(privacy["refuse"]) & set(privacy["drop"])
    if both:
        raise ConfigError(f"{where}: privacy: {sorted(both)[0]} is in both refuse and drop")


def server_token(config: Mapping, where: str = "config") -> str | None:
    """The daemon's bearer token ([server] token, or the first line of token_file), or None: no token."""
    server = config["server"]
    if server["token"]:
        return server["token"]
    if not server["token_file"]:
        return None
    try:
        token = Path(server["token_file"]).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"{where}: server.token_file: {server['token_file']}: cannot read ({reason})") from None
    if not token:
        raise ConfigError(f"{where}: server.token_file: {server['token_file']}: empty")
    return token


SECRETS = (("server", "token"),)


def without_secrets(values: Mapping) -> dict:
    """The config as `config show` prints it: a secret that is set shows as "<set>", never its value."""
    shown = {section: dict(table) for section, table in values.items()}
    for section, key in SECRETS:
        if shown[section][key]:
            shown[section][key] = "<set>"
    return shown


def privacy_policy(config: Mapping) -> dict[str, str]:
    """{kind: "refuse" | "drop"} from [privacy]; other kinds are redacted with a placeholder."""
    privacy = config["privacy"]
    return {**{kind: "drop" for kind in privacy["drop"]}, **{kind: "refuse" for kind in privacy["refuse"]}}


def routing_overrides(config: Mapping) -> dict:
    """The [routing] keys that are set (-1 means: keep the bundle's value)."""
    return {key: value for key, value in config["routing"].items() if value >= 0}


def to_toml(values: Mapping) -> str:
    """A TOML rendering of a config (scalars and lists of strings only, which is all SCHEMA has)."""
    import json

    def scalar(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string

    lines = []
    for section, table in values.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {scalar(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)
