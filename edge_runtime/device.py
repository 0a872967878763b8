"""The composition root: one place that builds a device's parts from its configuration.

The daemon (`server/service.py`) and the commands that run on a device (`predict`, `eval`, `redact`,
`upstream`, `update`) all build from a `Device`, so a setting means the same thing everywhere: the
[routing] overrides, the [privacy] policy and tagger, the [uplink] broker and device id.

    device = Device.from_config(config.load(path))
    model = device.load_model()
    pipeline = device.pipeline(model)          # router + egress + outbox (+ uplink when given)
    outcomes = pipeline.dispatch(texts)

Nothing here runs at import: every part is built when asked for, so a command pays only for the parts
it uses (`predict` opens no outbox, `redact` loads no classifier).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping

from . import config as configuration
from . import paths
from .escalation import check_device_id

log = logging.getLogger(__name__)


class Device:
    def __init__(self, config: Mapping):
        self.config = config

    @classmethod
    def from_config(cls, path=None, cli: Mapping | None = None) -> Device:
        """The device of a config file (or $EDGE_RUNTIME_CONFIG, or /etc/edge-runtime/config.toml when it
        exists), the environment and command-line overrides, in that order of precedence."""
        return cls(configuration.load(path, cli=cli))

    # -- identity and links ---------------------------------------------------------------------------
    @property
    def device_id(self) -> str:
        """[uplink] device_id, else the host name; the one rule for both is escalation.check_device_id."""
        return check_device_id(self.config["uplink"]["device_id"] or socket.gethostname())

    def broker(self, default_url: str = ""):
        """The [uplink] broker (`default_url` when none is set), or None: offline."""
        from .mqtt import BrokerConfig

        settings = dict(self.config["uplink"])
        settings["broker"] = settings["broker"] or default_url
        return BrokerConfig.from_settings(settings) if settings["broker"] else None

    # -- the request path -----------------------------------------------------------------------------
    def load_model(self, ref=None, *, threads: int | None = None, allow_unsigned: bool = False, max_batch: int = 32):
        """A verified bundle: `ref` (path, name, name@version) or the store's active one."""
        from .model import load

        threads = self.config["server"]["threads"] if threads is None else threads
        return load(ref, threads=threads, allow_unsigned=allow_unsigned, max_batch=max_batch)

    def router(self, model):
        """The bundle's routing policy with the config's [routing] overrides laid over it."""
        from .router import Router, RoutingPolicy

        return Router(
            RoutingPolicy.from_dict(model.manifest.raw.get("routing"), configuration.routing_overrides(self.config))
        )

    def tagger(self, ref: str | None = None, *, required: bool = False, lazy: bool = False):
        """The PII tagger ([privacy] tagger, or `ref`), or None when none is configured or it cannot be
        loaded; `required` raises instead (an explicit `--tagger` on the command line). `lazy` (the daemon,
        with [privacy] tagger_lazy): verified now, loaded on first use, unloaded after tagger_idle_unload_s."""
        from .pii_tagger import load_tagger

        privacy = self.config["privacy"]
        ref = privacy["tagger"] if ref is None else ref
        idle = float(privacy["tagger_idle_unload_s"]) if lazy and privacy["tagger_lazy"] else None
        tagger = load_tagger(ref, required=required, idle_unload_s=idle)
        if tagger is None and ref:
            consequence = (
                "escalations stay on the device until it is (privacy_unavailable)"
                if self.config["privacy"]["require_tagger"]
                else "names and addresses are not redacted (require_tagger = false)"
            )
            log.warning(
                "no PII tagger (%s not loaded): %s; `edge-runtime build pii-tagger` builds it", ref, consequence
            )
        return tagger

    def egress(self, *, tagger=None, audit: bool = True):
        """What may leave the device: the [privacy] policy, the tagger, and an audit log of every decision.
        With `require_tagger` (the default) nothing leaves while the configured tagger is not loaded."""
        from .audit import AuditLog
        from .egress import Egress

        privacy = self.config["privacy"]
        audit_log = AuditLog(paths.state_dir() / "audit.jsonl") if audit else None
        required = privacy["tagger"] if privacy["require_tagger"] else ""
        return Egress(
            configuration.privacy_policy(self.config), audit=audit_log, tagger=tagger, required_tagger=required
        )

    def outbox(self):
        """The outbox, whatever its file's state: a corrupt one is moved aside and a fresh one started, and an
        unopenable one is an UnavailableOutbox (escalations stay local) rather than a device that cannot start."""
        from .outbox import open_outbox

        return open_outbox(paths.state_dir() / "outbox.sqlite")

    def uplink(self, outbox, bundle: tuple[str, str] = ("", "")):
        """The MQTT uplink to the [uplink] broker, or None when none is configured (offline: the outbox
        keeps the escalations until one is)."""
        broker = self.broker()
        if broker is None:
            return None
        from .uplink import Uplink

        return Uplink(self.device_id, broker, outbox, bundle=bundle)

    def pipeline(self, model, *, egress=None, outbox=None, uplink=None):
        """preprocess -> session -> postprocess (the model) -> router -> answer, or redact -> outbox -> uplink.
        Without an outbox or an uplink, escalations stay local (a technician's offline `predict`)."""
        from .pipeline import Pipeline

        return Pipeline(
            model,
            self.router(model),
            egress=egress,
            uplink=uplink,
            outbox=outbox,
            device_id=self.device_id,
            deadline_s=self.config["uplink"]["deadline_ms"] / 1000.0,
        )
