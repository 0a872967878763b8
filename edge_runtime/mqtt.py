"""The shared paho client: MQTT 5, TCP_NODELAY, TLS/credentials, reconnect with jittered backoff.

`Link` owns one paho client and its network thread (paho's loop_start, so publish() from other
threads only queues). Both the device uplink and the upstream worker use it.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .errors import ConfigError, EdgeRuntimeError
from .ratelimit import ThrottledLog

log = logging.getLogger(__name__)
_callback_log = ThrottledLog(log)
PASSWORD_ENV = "EDGE_RUNTIME_MQTT_PASSWORD"  # never in a file or on a command line


class LinkError(EdgeRuntimeError):
    """The broker cannot be reached or refused us (TLS, credentials, ACL)."""


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Mapping) -> BrokerConfig:
        """The broker of a config's [uplink] table (every command that talks to a broker builds it here).
        TLS is on for an mqtts:// URL and whenever a CA or a client certificate is given."""
        ca_file, cert_file = settings.get("ca_file") or None, settings.get("cert_file") or None
        return cls.from_url(
            settings["broker"],
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=settings.get("key_file") or None,
            username=settings.get("username") or None,
            password=os.environ.get(PASSWORD_ENV),
            tls=True if (ca_file or cert_file) else None,
        )

    @classmethod
    def from_url(cls, url: str, **overrides) -> BrokerConfig:
        """`mqtt://[user[:password]@]host[:port]` or `mqtts://...` (TLS, default port 8883)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"broker URL {url!r} must look like mqtt://host:port or mqtts://host:port")
        try:
            port = parts.port
        except ValueError as error:
            raise ConfigError(f"broker URL {url!r}: {error}") from None
        tls = parts.scheme == "mqtts"
        config = cls(
            host=parts.hostname,
            port=port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
        overrides = {key: value for key, value in overrides.items() if value is not None}
        return replace(config, **overrides)


class Backoff:
    """Exponential backoff with full jitter, so a fleet does not reconnect in lockstep."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None):
        self.min_s, self.max_s = min_s, max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        cap = min(self.max_s, self.min_s * (2**self.attempt))
        self.attempt += 1
        return self.min_s / 2 + self._rng.uniform(0, cap - self.min_s / 2)

    def reset(self) -> None:
        self.attempt = 0


def _set_nodelay(client, userdata, sock) -> None:
    # Nagle + delayed ACK cost ~88 ms per request/response round trip; off it is ~0.4 ms.
    raw = getattr(sock, "socket", sock)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def make_client(config: BrokerConfig, client_id: str) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.on_socket_open = _set_nodelay
    client.max_inflight_messages_set(65535)  # our own window bounds what is in flight
    client.max_queued_messages_set(0)
    if config.username:
        client.username_pw_set(config.username, config.password)
    if config.tls:
        try:
            client.tls_set(
                ca_certs=config.ca_file,
                certfile=config.cert_file,
                keyfile=config.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"cannot load TLS files: {error}") from None
    return client


def guarded(name: str, func: Callable, errors: collections.Counter | None = None) -> Callable:
    """`func` as a paho callback that never raises: paho 2.x re-raises a callback's exception in its network
    thread, which ends that thread, and with it every later message, silently. The exception is logged
    (at most once per 10 s per callback) and counted in `errors[name]`; the message that caused it is dropped."""

    @functools.wraps(func)
    def call(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception:
            if errors is not None:
                errors[name] += 1
            _callback_log.log(
                logging.ERROR, name, "mqtt callback %s raised; its message is dropped", name, exc_info=True
            )
            return None

    return call


@dataclass
class Subscription:
    topic: str
    qos: int = 1


@dataclass
class LinkHandlers:
    on_message: Callable[[paho.MQTTMessage], None] | None = None
    on_connected: Callable[[bool], None] | None = None  # arg: session_present
    on_disconnected: Callable[[], None] | None = None
    on_publish: Callable[[int, int, str], None] | None = None  # mid, reason code value, name


@dataclass
class Link:
    config: BrokerConfig
    client_id: str
    subscriptions: list[Subscription] = field(default_factory=list)
    handlers: LinkHandlers = field(default_factory=LinkHandlers)
    clean_start: bool = False
    session_expiry_s: int = 86400

    def __post_init__(self):
        self.client = make_client(self.config, self.client_id)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        self.connects = 0
        self._backoff = Backoff(self.config.backoff_min_s, self.config.backoff_max_s)
        self._got_connack = False
        self.callback_errors: collections.Counter[str] = collections.Counter()
        client = self.client

        def guard(name, func):
            return guarded(name, func, self.callback_errors)

        # Every callback paho calls is guarded: an exception would end paho's network thread.
        client.on_connect = guard("on_connect", self._on_connect)
        client.on_connect_fail = guard("on_connect_fail", self._on_connect_fail)
        client.on_disconnect = guard("on_disconnect", self._on_disconnect)
        client.on_subscribe = guard("on_subscribe", self._on_subscribe)
        if self.handlers.on_message:
            client.on_message = guard("on_message", lambda c, u, message: self.handlers.on_message(message))
        if self.handlers.on_publish:
            client.on_publish = guard(
                "on_publish", lambda c, u, mid, rc, props: self.handlers.on_publish(mid, rc.value, str(rc))
            )
        self._schedule_retry()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.session_expiry_s
        self.client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive,
            clean_start=self.clean_start,
            properties=properties,
        )
        self.client.loop_start()

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        self.connected.clear()

    def wait_ready(self, timeout: float) -> None:
        """Block until connected and subscribed; raise LinkError with the broker's reason otherwise."""
        if self.subscribed.wait(timeout) if self.subscriptions else self.connected.wait(timeout):
            if self.last_error and self.last_error.startswith("subscription"):
                raise LinkError(self.last_error)
            return
        where = f"{self.config.host}:{self.config.port}"
        raise LinkError(f"broker {where} not ready after {timeout:g} s: {self.last_error or 'no answer'}")

    # -- paho callbacks (network thread) -----------------------------------------------------
    def _schedule_retry(self) -> None:
        delay = self._backoff.next()
        self.client.reconnect_delay_set(delay, delay)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self._got_connack = True
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason} ({reason.value})"
            log.error("mqtt %s: %s", self.client_id, self.last_error)
            return
        self.connects += 1
        self._backoff.reset()
        self._schedule_retry()
        if self.subscriptions:
            client.subscribe([(s.topic, s.qos) for s in self.subscriptions])
        self.connected.set()
        if self.handlers.on_connected:
            self.handlers.on_connected(bool(flags.session_present))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [(s.topic, rc) for s, rc in zip(self.subscriptions, reason_codes) if rc.is_failure]
        if refused:
            topic, rc = refused[0]
            self.last_error = f"subscription to {topic} refused: {rc} ({rc.value})"
            log.error("mqtt %s: %s", self.client_id, self.last_error)
        self.subscribed.set()

    def _on_connect_fail(self, client, userdata) -> None:
        if not self.connected.is_set():
            self.last_error = f"cannot connect to {self.config.host}:{self.config.port}"
        self._schedule_retry()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.subscribed.clear()
        if not self._got_connack:
            # TLS 1.3: connect() returns before the broker rejects our certificate.
            self.last_error = f"connection closed before CONNACK ({reason}): certificate or credentials refused?"
            log.error("mqtt %s: %s", self.client_id, self.last_error)
        elif reason.is_failure and was_connected:
            self.last_error = f"disconnected: {reason}"
            log.warning("mqtt %s: %s", self.client_id, self.last_error)
        self._got_connack = False
        self._schedule_retry()
        if was_connected and self.handlers.on_disconnected:
            self.handlers.on_disconnected()
