"""The device update agent: follows its group's (and its own) desired state, runs the update state
machine (state.py) and reports every transition on edge/<id>/state.

Each step is written to disk before it runs and is idempotent, so after a crash `resume()` runs the
persisted step again: a download continues from its bitmap, verification and install are repeated
(the store's install is idempotent), activation is skipped if active.json already points at the
target, probation restarts, a rollback finishes.

Release records and desired states must verify with keys of the fleet role (signing.py), at the fleet
threshold; bundles themselves with the bundle role (the store). A desired state's seq is marked seen in
the same atomic write that records what it started (or why it was refused), so a crash in between leaves
it unseen and the retained copy is acted on after a restart.

A download takes what it can from the release's HTTP(S) mirrors first (http_fetch.py) and the rest over
MQTT (fetch.py); the report's `download` counts chunks and bytes by source, so the bytes that crossed the
broker are known (`mqtt_bytes`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, paths, signing
from ..errors import BundleError, EdgeRuntimeError, StoreError
from ..mqtt import BrokerConfig, Link, LinkHandlers, Subscription
from ..store import Store
from . import probation, protocol, selftest
from . import release as releases
from .chunks import Download
from .errors import FleetError, Halted, ReleaseError
from .fetch import FetchConfig, fetch
from .http_fetch import MirrorConfig, fetch_from_mirrors
from .probation import ProbationConfig
from .state import BEFORE_ACTIVATION, TERMINAL, UpdateState, state_path

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    device_id: str
    group: str
    broker: BrokerConfig
    root: Path
    download_dir: Path | None = None
    daemon_url: str | None = None
    daemon_token: str | None = None  # the daemon's [server] token: /v1/admin/reload needs it when one is set
    threshold: int = 1  # at least this many fleet signatures, and at least keys/roles.json's fleet threshold
    latency_budget_ms: float = 1000.0
    heartbeat_s: float = 30.0
    probation: ProbationConfig = field(default_factory=ProbationConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    mirror: MirrorConfig = field(default_factory=MirrorConfig)


def _ref(pair) -> str | None:
    return f"{pair[0]}@{pair[1]}" if pair else None


class Agent:
    def __init__(self, config: AgentConfig):
        releases.check_group(config.group)
        self.config = config
        self.store = Store(config.root)
        self.state = UpdateState(state_path(config.root))
        self.state.seed(self.store.highest_release())  # anti-rollback never starts below what is installed
        self.download_dir = Path(config.download_dir or paths.state_dir(config.root) / "fleet" / "downloads")
        self.inbox: queue.Queue = queue.Queue()
        self.pending: list = []
        device = config.device_id
        self.chunk_topic = protocol.chunk_topic(device)
        self.link = Link(
            config.broker,
            f"edge-update-{device}",
            subscriptions=[
                Subscription(protocol.group_desired_topic(config.group)),
                Subscription(protocol.device_desired_topic(device)),
                Subscription(self.chunk_topic),
            ],
            handlers=LinkHandlers(on_message=self.inbox.put),
        )

    # --- main loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        self.link.start()
        try:
            self.report()
            self.resume()
            last_report = time.monotonic()
            while not stop.is_set():
                message = self.pending.pop(0) if self.pending else self._next(1.0)
                if message is not None:
                    self.handle(message)
                if time.monotonic() - last_report > self.config.heartbeat_s:
                    self.report()
                    last_report = time.monotonic()
        finally:
            self.link.stop()

    def _next(self, timeout: float):
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def resume(self) -> None:
        """Finish (or abort) what a killed agent left in progress."""
        if self.state.error:
            log.error("%s", self.state.error)
            return
        if self.state.phase not in TERMINAL:
            log.info("resuming update in phase %s", self.state.phase)
            self.drive()

    # --- reporting --------------------------------------------------------------------------------
    def report(self) -> None:
        try:
            active, previous = _ref(self.store.active()), _ref(self.store.previous())
        except StoreError as error:
            active, previous = None, None
            log.error("%s", error)
        data = self.state.data
        signed = (data.get("release") or {}).get("signed") or {}
        rates = data.get("probation") or {}
        message = protocol.build_state(
            self.config.device_id,
            self.config.group,
            phase=data["phase"],
            active=active,
            previous=previous,
            release=signed.get("release"),
            target=_ref((signed["bundle"]["name"], signed["bundle"]["version"])) if signed.get("bundle") else None,
            installed_release=data["installed_release"],
            state_error=self.state.error,
            last_error=data["last_error"],
            refused=data["refused"],
            note=data.get("note"),
            escalation_rate=rates.get("escalation_rate"),
            download=data.get("download"),
            runtime=__version__,
        )
        self.link.client.publish(
            protocol.state_topic(self.config.device_id), protocol.encode(message), qos=1, retain=True
        )

    def refuse(self, number, reason: str, **record) -> None:
        """Record a refusal (and `record`, e.g. the seq it answers) in one write, then report it."""
        log.warning("refused: %s", reason)
        self.state.save(refused={"release": number, "reason": reason, "at": time.time()}, last_error=reason, **record)
        self.report()

    def _fleet_trust(self) -> tuple[dict, int]:
        """The fleet role's keys and threshold (never the device's local build key)."""
        try:
            keys = signing.trusted_keys(self.config.root, "fleet")
            threshold = max(self.config.threshold, signing.threshold(self.config.root, "fleet"))
        except BundleError as error:
            raise ReleaseError(f"fleet keys: {error}") from None
        return keys, threshold

    def _verify_record(self, envelope) -> releases.Release:
        keys, threshold = self._fleet_trust()
        signed = releases.verify_envelope(envelope, keys, threshold, "release record")
        return releases.check_shape(signed)

    def _verify_full(self, envelope) -> releases.Release:
        keys, threshold = self._fleet_trust()
        return releases.verify(
            envelope,
            keys,
            group=self.config.group,
            installed_release=self.state.installed_release,
            threshold=threshold,
            runtime=__version__,
        )

    # --- desired state ----------------------------------------------------------------------------
    def _verify_desired(self, message) -> tuple[str, dict] | None:
        scope = protocol.scope_of(message.topic)
        if scope is None:
            return None
        if self.state.error:
            self.refuse(None, self.state.error)
            return None
        try:
            keys, threshold = self._fleet_trust()
            desired = protocol.verify_desired(message.payload, keys, threshold, *scope)
        except ReleaseError as error:
            self.refuse(None, str(error))
            return None
        key = f"{scope[0]}:{scope[1]}"
        seen = self.state.seen(key)
        number = ((desired.get("release") or {}).get("signed") or {}).get("release")
        if desired["seq"] < seen:
            self.refuse(number, f"replayed desired state (seq {desired['seq']}, already saw {seen})")
            return None
        if desired["seq"] == seen:
            return None  # the retained copy of what we already handled
        return key, desired

    def handle(self, message) -> None:
        checked = self._verify_desired(message)
        if checked is None:
            return
        key, desired = checked
        # Marked seen only together with what the desired state started (one atomic write below).
        seen = {**self.state.data["seen_seq"], key: desired["seq"]}
        action = desired["action"]
        if action == "halt":
            reason = desired.get("reason") or "no reason given"
            self.state.save(note=f"halted by the fleet manager: {reason}", seen_seq=seen)
            self.report()
        elif action == "rollback":
            self._fleet_rollback(desired, seen)
        elif desired["stage"] == "canary" and self.config.device_id not in desired["canaries"]:
            self.state.save(note="waiting: release is with the canaries", seen_seq=seen)
            self.report()
        else:
            self._install(desired["release"], seen)

    def _install(self, envelope: dict, seen: dict) -> None:
        try:
            current = self._verify_record(envelope)
            if current.number == self.state.installed_release and self.store.active() == (
                current.name,
                current.version,
            ):
                self.state.save(seen_seq=seen)
                return  # already running it (e.g. the promotion of a release this canary committed)
            self._verify_full(envelope)
        except ReleaseError as error:
            self.refuse(((envelope or {}).get("signed") or {}).get("release"), str(error), seen_seq=seen)
            return
        self.state.transition(
            "downloading",
            seen_seq=seen,
            release=envelope,
            last_error=None,
            refused=None,
            note=None,
            selftest=None,
            probation=None,
            baseline=None,
            previous=None,
            download=None,
            staged=None,
        )
        self.drive()

    def _fleet_rollback(self, desired: dict, seen: dict) -> None:
        try:
            target = self._verify_record(desired["release"])
        except ReleaseError as error:
            self.refuse(None, str(error), seen_seq=seen)
            return
        if self.store.active() != (target.name, target.version):
            self.state.save(note=f"fleet rollback of {target.ref}: not active here, nothing to do", seen_seq=seen)
            self.report()
            return
        self.state.transition(
            "rolling_back",
            seen_seq=seen,
            release=desired["release"],
            previous=list(self.store.previous() or []),
            last_error=f"rolled back by the fleet manager: {desired.get('reason') or target.ref}",
        )
        self.drive()

    def _during_download(self, message) -> None:
        """A newer desired state during a download stops it, unless it names the same release."""
        checked = self._verify_desired(message)
        if checked is None:
            return
        key, desired = checked
        same = desired["action"] == "install" and (desired.get("release") or {}) == self.state.release
        if same:
            self.state.save(seen_seq={**self.state.data["seen_seq"], key: desired["seq"]})
            return
        self.pending.append(message)
        raise Halted(
            f"download stopped: {desired['action']} from the fleet manager "
            f"({desired.get('reason') or 'newer desired state'})"
        )

    # --- the state machine ------------------------------------------------------------------------
    def drive(self) -> None:
        steps = {
            "downloading": self._download,
            "verifying": self._verify,
            "staged": self._staged,
            "selftest": self._selftest,
            "activating": self._activate,
            "probation": self._probation,
            "rolling_back": self._roll_back,
        }
        while self.state.phase not in TERMINAL:
            phase = self.state.phase
            self.report()
            try:
                next_phase, changes = steps[phase]()
            except Halted as stop:
                self._cleanup()
                self.state.transition("idle", note=str(stop))
                continue
            except Exception as error:  # noqa: BLE001 - any failure ends in failed or a rollback
                reason = str(error) if isinstance(error, EdgeRuntimeError) else f"{type(error).__name__}: {error}"
                log.error("update %s failed: %s", phase, reason)
                if phase in BEFORE_ACTIVATION:
                    self._cleanup()
                    self.state.transition("failed", last_error=f"{phase}: {reason}")
                elif phase == "rolling_back":
                    self.state.transition("failed", last_error=f"rollback failed: {reason}")
                else:
                    self.state.transition("rolling_back", last_error=f"{phase}: {reason}")
                continue
            self.state.transition(next_phase, **changes)
        self.report()

    def _release(self) -> releases.Release:
        return releases.check_shape(self.state.release["signed"])

    def _download(self):
        target = self._release()
        download = Download(self.download_dir, target).open()
        resumed = len(download.done)
        from_mirrors = fetch_from_mirrors(download, target.mirrors, self.config.mirror, between=self._drain_inbox)
        before_mqtt = download.bytes_written
        device = self.config.device_id
        request_topic = protocol.chunk_request_topic(device)

        def request(indices):
            self.link.client.publish(request_topic, protocol.build_request(device, target.sha256, indices), qos=1)

        counters = fetch(
            download,
            self.inbox,
            chunk_topic=self.chunk_topic,
            request=request,
            on_other=self._during_download,
            config=self.config.fetch,
        )
        download_report = {
            **counters,  # the MQTT chunk loop's: requested, received, bad, duplicates
            **from_mirrors,
            "mqtt_bytes": download.bytes_written - before_mqtt,
            "resumed": resumed,  # chunks already on disk (the bitmap of an interrupted attempt)
            "chunks": download.total,
            "bytes": target.size,
        }
        return "verifying", {"download": download_report}

    def _drain_inbox(self) -> None:
        """Between mirror chunks: what arrived meanwhile is handled as during the MQTT chunk loop (a newer
        desired state stops the download with Halted); a late chunk message of an earlier attempt is dropped."""
        while True:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return
            if message.topic != self.chunk_topic:
                self._during_download(message)

    def _verify(self):
        target = self._verify_full(self.state.release)
        archive = Download(self.download_dir, target).open().finish()
        manifest = self.store.install(archive)  # verifies the bundle's own signature and every file's hash
        if (manifest.name, manifest.version) != (target.name, target.version):
            raise ReleaseError(f"the archive holds {manifest.ref}, the release record says {target.ref}")
        return "staged", {
            "installed_release": max(self.state.installed_release, target.number),
            "staged": [target.name, target.version],
        }

    def _staged(self):
        Download(self.download_dir, self._release()).discard()
        return "selftest", {}

    def _selftest(self):
        target = self._release()
        result = selftest.run(
            self.store.path(target.name, target.version), self.store.root, self.config.latency_budget_ms
        )
        current = self.store.active()
        previous = self.store.previous() if current == (target.name, target.version) else current
        return "activating", {"selftest": result, "previous": list(previous) if previous else None}

    def _activate(self):
        target = self._release()
        baseline = self._baseline(_ref(self.state.data.get("previous")))
        if self.store.active() != (target.name, target.version):
            self.store.activate(target.name, target.version)
        self._reload_daemon()
        return "probation", {"baseline": baseline}

    def _live_probation(self) -> bool:
        return bool(self.config.daemon_url) and self.config.probation.traffic is None

    def _baseline(self, previous_ref: str | None) -> dict | None:
        """The previous model's live counters, read from the daemon before the swap (None if it serves
        something else, or cannot say: probation then only checks the new model's own counters)."""
        if not (self._live_probation() and previous_ref):
            return None
        try:
            model = self._daemon_status().get("model") or {}
        except OSError as error:
            log.warning("no probation baseline: %s", error)
            return None
        return model.get("live") if probation.serving_ref(model) == previous_ref else None

    def _probation(self):
        target = self._release()
        previous = self.state.data.get("previous")
        if self._live_probation():
            baseline = self.state.data.get("baseline")
            result = probation.live(self._daemon_status, target.ref, baseline, self.config.probation)
        else:
            result = probation.run(self.store.root, target.ref, _ref(previous), self.config.probation)
        return "committed", {"probation": result, "staged": None}

    def _roll_back(self):
        target = self._release()
        previous = tuple(self.state.data.get("previous") or ())
        if self.store.active() == (target.name, target.version):
            if not previous:
                raise FleetError("no previous model to roll back to")
            if self.store.previous() == previous:
                self.store.rollback()
            else:
                self.store.activate(*previous)
        self._reload_daemon()
        return "rolled_back", {"staged": None}

    def _cleanup(self) -> None:
        """Before activation: drop the partial download and a staged version we installed."""
        if self.state.release:
            try:
                Download(self.download_dir, self._release()).discard()
            except (ReleaseError, OSError):
                pass
        staged = self.state.data.get("staged")
        if staged and tuple(staged) not in (self.store.active(), self.store.previous()):
            try:
                self.store.remove(*staged)
            except StoreError:
                pass
        self.state.save(staged=None)

    def _daemon_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.daemon_token:
            headers["Authorization"] = f"Bearer {self.config.daemon_token}"
        return headers

    def _daemon_request(self, url: str, body: bytes | None = None, timeout: float = 10.0) -> bytes:
        """The daemon's answer at `url` (POST when `body` is given), at most 1 MB; OSError with the reason."""
        method = "GET" if body is None else "POST"
        request = urllib.request.Request(url, data=body, method=method, headers=self._daemon_headers())
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read(1 << 20)
        except (urllib.error.URLError, OSError) as error:
            raise OSError(getattr(error, "reason", error)) from None

    def _daemon_status(self) -> dict:
        """The daemon's /v1/status; OSError while it cannot be reached or answers something else."""
        url = self.config.daemon_url.rstrip("/") + "/v1/status"
        try:
            status = json.loads(self._daemon_request(url))
        except (OSError, ValueError) as error:
            raise OSError(f"{url}: {error}") from None
        if not isinstance(status, dict):
            raise OSError(f"{url}: not a JSON object")
        return status

    def _reload_daemon(self) -> None:
        if not self.config.daemon_url:
            return
        url = self.config.daemon_url.rstrip("/") + "/v1/admin/reload"
        try:
            body = self._daemon_request(url, b"{}", timeout=60)
        except OSError as error:
            raise FleetError(f"daemon reload at {url} failed: {error}") from None
        log.info("daemon reload: %s", body[:200])
