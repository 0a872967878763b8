"""The fleet manager: publish signed desired states, answer chunk requests, watch device reports,
promote canary rollouts that committed and halt the ones that failed.

Who is in a group is the device registry's answer (registry.py), never a device's: a desired state is
signed for one enrolled device and published on its own topic (fleet/devices/<id>/desired), which the
broker lets only that device read, so a device enrolled in group A never receives group B's release,
whatever group it claims. Reports are used for decisions (canaries, promote, halt) only from enrolled
devices whose report names the group they are enrolled in; a report naming another group is flagged in
`status`, and reports from devices that are not enrolled are counted and shown, never acted on.

Everything a device sends is checked (protocol.parse_state / parse_request) before it is used; what does
not check out is dropped, counted by reason and logged at most once per 10 s per reason. Chunk requests
are rate-limited per device and served only for releases of the device's enrolled group (access.ChunkAccess).
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..fsutil import atomic_write_json
from ..mqtt import BrokerConfig, Link, LinkHandlers, Subscription
from ..ratelimit import KeyedBuckets, ThrottledLog
from ..schema import SchemaError
from . import protocol
from . import release as releases
from . import rollout as rollouts
from .access import ChunkAccess, Refused
from .chunks import read_chunk
from .errors import FleetError, ReleaseError
from .fleetdir import FleetDir, next_seq
from .registry import RegistryError

log = logging.getLogger(__name__)
METRICS_FILE = "serve-metrics.json"  # in the fleet dir: `fleet serve` writes it, `fleet status` shows it
METRICS_EVERY_S = 2.0


@dataclass(frozen=True)
class ServeLimits:
    """Per-device budgets of `fleet serve`. A well-behaved device keeps 8 chunks in flight and sends a few
    reports a minute; what goes over a budget is dropped (the device asks again after its chunk timeout)."""

    chunk_rate: float = 32.0  # chunks per second (4 MiB/s at 128 KiB chunks)
    chunk_burst: float = 64.0
    message_rate: float = 20.0  # messages per second, any kind
    message_burst: float = 100.0


@dataclass(frozen=True)
class Roster:
    """The registry's groups and the devices that follow their own desired state (`publish --device`), read
    once per decision."""

    groups: dict[str, str]
    pinned: frozenset[str]

    def members(self, group: str) -> list[str]:
        """The devices a change of the group's rollout is sent to."""
        return sorted(d for d, g in self.groups.items() if g == group and d not in self.pinned)

    def trusted(self, states: dict[str, dict], group: str) -> dict[str, dict]:
        """The reports the group's decisions rest on: its members' whose report names the same group. A
        member reporting another group is left out (flagged by `status`): its claim cannot add it to a
        group, and a device that says something else than its enrollment is no canary to judge a release by."""
        return {d: states[d] for d in self.members(group) if d in states and states[d].get("group") == group}


@dataclass
class DeviceReports:
    """What the devices' retained state reports say: the valid ones, and why the others were refused."""

    valid: dict[str, dict]
    invalid: dict[str, str]


class Manager:
    def __init__(
        self,
        broker: BrokerConfig,
        fleet_dir: FleetDir,
        keys=(),
        timeout_s: float = 15.0,
        limits: ServeLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        desired_ttl_s: int = protocol.DEFAULT_DESIRED_TTL_S,
    ):
        self.broker, self.fleet, self.keys, self.timeout_s = broker, fleet_dir, list(keys), timeout_s
        self.limits = limits or ServeLimits()
        self.desired_ttl_s = desired_ttl_s  # devices refuse a desired state older than this
        self.bytes_served = 0
        self.chunks_served = 0
        self.invalid: collections.Counter[str] = collections.Counter()  # "<message kind>/<reason>"
        self.refused: collections.Counter[str] = collections.Counter()  # "<reason>"
        # reports that were well-formed but not used: "unenrolled", "group_mismatch", "registry_unreadable"
        self.ignored: collections.Counter[str] = collections.Counter()
        self.access = ChunkAccess(fleet_dir, fleet_dir.registry)
        self._chunk_budget = KeyedBuckets(self.limits.chunk_rate, self.limits.chunk_burst, clock)
        self._message_budget = KeyedBuckets(self.limits.message_rate, self.limits.message_burst, clock)
        self._log = ThrottledLog(log, clock=clock)
        self._link_errors: collections.Counter[str] | None = None

    # --- MQTT helpers -----------------------------------------------------------------------------
    def _link(self, subscriptions=(), on_message=None, client_id=None) -> Link:
        link = Link(
            self.broker,
            client_id or f"edge-fleet-{uuid.uuid4().hex[:8]}",
            subscriptions=[Subscription(t) for t in subscriptions],
            handlers=LinkHandlers(on_message=on_message),
            clean_start=True,
            session_expiry_s=0,
        )
        link.start()
        link.wait_ready(self.timeout_s)
        return link

    def device_reports(self, wait_s: float = 1.0) -> DeviceReports:
        """Every device's retained report (the broker sends them on subscribe), checked."""
        reports = DeviceReports({}, {})

        def collect(message):
            device = protocol.device_of(message.topic, "state")
            if device is None or not message.payload:  # an empty retained message withdraws a report
                return
            try:
                reports.valid[device] = protocol.parse_state(message.payload, device)
                reports.invalid.pop(device, None)
            except SchemaError as error:
                reports.valid.pop(device, None)
                reports.invalid[device] = str(error)

        link = self._link([protocol.state_topic("+")], collect)
        time.sleep(wait_s)
        link.stop()
        return DeviceReports(dict(reports.valid), dict(reports.invalid))

    def device_states(self, wait_s: float = 1.0) -> dict[str, dict]:
        """The devices whose retained report is valid."""
        return self.device_reports(wait_s).valid

    def roster(self) -> Roster:
        """RegistryError when the registry is unreadable: no decision is taken without it."""
        pinned = frozenset(r["device"] for r in self.fleet.device_rollouts())
        return Roster(self.fleet.registry.groups(), pinned)

    def _publish_desired(self, rollout: dict, action: str, stage: str, reason: str = "") -> list[str]:
        """Sign the desired state for each device it is for (a group's members, or the one device of a
        `publish --device`) and publish it retained on that device's topic; the devices it went to."""
        if not self.keys:
            raise FleetError("signing desired states needs the fleet key (--key)")
        envelope = releases.read(self.fleet.releases / f"{rollout['release']['sha256']}.release.json")
        devices = [rollout["device"]] if rollout.get("device") else self.roster().members(rollout["group"])
        link = self._link()
        try:
            sent = []
            for device in devices:
                desired = protocol.build_desired(
                    self.keys,
                    scope="device",
                    target=device,
                    seq=rollout["seq"],
                    action=action,
                    release=envelope,
                    stage=stage,
                    canaries=rollout["canaries"],
                    reason=reason,
                    ttl_s=self.desired_ttl_s,
                )
                topic = protocol.device_desired_topic(device)
                sent.append((device, link.client.publish(topic, protocol.encode(desired), qos=1, retain=True)))
            for device, info in sent:
                info.wait_for_publish(self.timeout_s)
                if not info.is_published():
                    raise FleetError(f"broker did not acknowledge the desired state for device {device}")
        finally:
            link.stop()
        return devices

    def _checked_release(self, release_file: Path) -> tuple[dict, releases.Release]:
        envelope = releases.read(release_file)
        signed = envelope.get("signed") if isinstance(envelope, dict) else None
        target = releases.check_shape(signed)
        if time.time() > target.expires_at:
            raise ReleaseError(f"release {target.number} expired at {releases.iso(target.expires_at)}")
        return envelope, target

    # --- commands ---------------------------------------------------------------------------------
    def publish(
        self, release_file: Path, archive: Path, group: str, canary_pct: float = 0.0, discover_s: float = 1.0
    ) -> dict:
        envelope, target = self._checked_release(release_file)
        if releases.check_group(group) not in target.groups:
            raise ReleaseError(f"release {target.number} is for group(s) {', '.join(target.groups)}, not {group}")
        roster = self.roster()  # an unreadable registry stops the publish here, before anything changes
        canaries: list[str] = []
        if 0 < canary_pct < 100:
            devices = sorted(roster.trusted(self.device_states(discover_s), group))
            if not devices:
                raise FleetError(
                    f"no device enrolled in group {group} has reported that group yet: cannot pick canaries "
                    "(publish with --canary 0 to send to all)"
                )
            canaries = rollouts.choose_canaries(devices, canary_pct, target.sha256)
        self.fleet.add_release(envelope, target, Path(archive))
        with self.fleet.locked():
            previous = self.fleet.rollout(group)
            rollout = {
                "group": group,
                "seq": next_seq(previous),
                "stage": "canary" if canaries else "all",
                "canaries": canaries,
                "reason": "",
                "started_at": time.time(),
                "release": {"number": target.number, "sha256": target.sha256, "ref": target.ref},
                "history": [],
            }
            rollout["devices"] = self._publish_desired(rollout, "install", rollout["stage"])
            return self.fleet.save_rollout(
                rollout, f"published {target.ref} (release {target.number}) to {len(rollout['devices'])} devices"
            )

    def publish_device(self, release_file: Path, archive: Path, device: str) -> dict:
        """Publish a release to one enrolled device only (stage all). The release must be for the group the
        registry has it in. From then on the device follows this desired state instead of its group's
        rollouts (`fleet device unpin` returns it to the group)."""
        envelope, target = self._checked_release(release_file)
        group = self.fleet.registry.group_of(device)
        if group is None:
            raise FleetError(f"device {device} is not enrolled (fleet device add {device} --group GROUP)")
        if group not in target.groups:
            raise ReleaseError(
                f"release {target.number} is for group(s) {', '.join(target.groups)}; "
                f"device {device} is enrolled in {group}"
            )
        self.fleet.add_release(envelope, target, Path(archive))
        with self.fleet.locked():
            previous = self.fleet.device_rollout(device)
            rollout = {
                "device": device,
                "group": group,
                # above the group's too: the device saw its seqs on the same topic
                "seq": max(next_seq(previous), next_seq(self.fleet.rollout(group))),
                "stage": "all",
                "canaries": [],
                "reason": "",
                "started_at": time.time(),
                "release": {"number": target.number, "sha256": target.sha256, "ref": target.ref},
                "history": [],
            }
            rollout["devices"] = self._publish_desired(rollout, "install", "all")
            return self.fleet.save_device_rollout(rollout, f"published {target.ref} (release {target.number})")

    def _change(self, group: str, stage: str, action: str, desired_stage: str, reason: str, event: str) -> dict:
        with self.fleet.locked():
            rollout = self.fleet.rollout(group)
            if rollout is None:
                raise FleetError(f"group {group}: nothing published")
            rollout.update(seq=next_seq(rollout), stage=stage, reason=reason)
            # to the group's members now: a device enrolled since the last change gets this one
            rollout["devices"] = self._publish_desired(rollout, action, desired_stage, reason)
            return self.fleet.save_rollout(rollout, f"{event} (sent to {len(rollout['devices'])} devices)")

    def promote(self, group: str, force: bool = False, states: dict | None = None) -> dict:
        rollout = self.fleet.rollout(group)
        if rollout is None:
            raise FleetError(f"group {group}: nothing published")
        if rollout["stage"] != "canary":
            raise FleetError(f"group {group}: rollout is {rollout['stage']}, not at the canary stage")
        states = states if states is not None else self.device_states()
        decision, why = rollouts.assess(rollout, self.roster().trusted(states, group))
        if decision != "promote" and not force:
            raise FleetError(f"group {group}: cannot promote ({why}); --force overrides")
        return self._change(group, "all", "install", "all", "", f"promoted: {why}")

    def halt(self, group: str, reason: str = "halted by operator") -> dict:
        return self._change(group, "halted", "halt", "all", reason, f"halted: {reason}")

    def rollback(self, group: str, reason: str = "rolled back by operator") -> dict:
        return self._change(group, "rolled_back", "rollback", "all", reason, f"rolled back: {reason}")

    def status(self, wait_s: float = 1.0) -> dict:
        """Every enrolled device with the group the registry has it in and the group it reports (flagged when
        they differ), the enrolled devices without a valid report, the reports of devices that are not
        enrolled (shown, never acted on), and each rollout assessed on the reports its decisions rest on."""
        roster = self.roster()
        reports = self.device_reports(wait_s)
        states = reports.valid
        devices, unenrolled = [], []
        for device in sorted(states):
            registered = roster.groups.get(device)
            if registered is None:
                unenrolled.append(states[device])
                continue
            devices.append(
                {
                    **states[device],
                    "registry_group": registered,
                    "group_mismatch": states[device]["group"] != registered,
                    "pinned": device in roster.pinned,
                }
            )
        result = []
        for rollout in self.fleet.rollouts():
            decision, why = rollouts.assess(rollout, roster.trusted(states, rollout["group"]))
            result.append(self._summary(rollout, decision, why))
        pinned = []
        for rollout in self.fleet.device_rollouts():
            device = rollout["device"]
            trusted = {device: states[device]} if states.get(device, {}).get("group") == rollout["group"] else {}
            decision, why = rollouts.assess(rollout, trusted)
            pinned.append(self._summary(rollout, None if decision == "promote" else decision, why))
        return {
            "devices": devices,
            "not_reporting": [
                {"device": d, "registry_group": g}
                for d, g in sorted(roster.groups.items())
                if d not in states and d not in reports.invalid
            ],
            "unenrolled": unenrolled,
            "invalid_reports": [
                {"device": d, "reason": reports.invalid[d], "registry_group": roster.groups.get(d)}
                for d in sorted(reports.invalid)
            ],
            "rollouts": result,
            "device_rollouts": pinned,
            "serve": self.serve_metrics(),
            "now": time.time(),
        }

    @staticmethod
    def _summary(rollout: dict, decision, why: str) -> dict:
        return {
            **{k: v for k, v in rollout.items() if k != "history"},
            "assessment": why if decision is None else f"{decision}: {why}",
            "last_event": rollout["history"][-1] if rollout.get("history") else None,
        }

    # --- counters ---------------------------------------------------------------------------------
    def metrics(self) -> dict:
        return {
            "chunks_served": self.chunks_served,
            "bytes_served": self.bytes_served,
            # dict() first: a copy in one step, while paho's thread may be adding a reason
            "invalid": dict(sorted(dict(self.invalid).items())),
            "refused": dict(sorted(dict(self.refused).items())),
            "ignored": dict(sorted(dict(self.ignored).items())),
            "callback_errors": dict(self._link_errors or {}),
            "limits": asdict(self.limits),
        }

    def serve_metrics(self) -> dict | None:
        """What the last `fleet serve` on this fleet dir counted (None if none ran)."""
        path = self.fleet.root / METRICS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            return {"error": f"{path}: unreadable ({error})"}
        return data if isinstance(data, dict) else {"error": f"{path}: not an object"}

    def _save_metrics(self, running: bool) -> None:
        try:
            atomic_write_json(
                self.fleet.root / METRICS_FILE, {**self.metrics(), "running": running, "updated_at": time.time()}
            )
        except OSError as error:
            self._log.log(logging.ERROR, "metrics", "cannot write %s: %s", METRICS_FILE, error)

    def _drop_invalid(self, kind: str, device: str | None, error: SchemaError) -> None:
        self.invalid[f"{kind}/{error.reason}"] += 1
        self._log.log(
            logging.WARNING, f"invalid/{kind}/{error.reason}", "dropped %s from %s: %s", kind, device or "?", error
        )

    def _refuse(self, device: str, reason: str, detail: str) -> None:
        self.refused[reason] += 1
        self._log.log(logging.WARNING, f"refused/{reason}", "refused: %s", detail)

    # --- the long-running side --------------------------------------------------------------------
    def _within_budget(self, device: str, kind: str) -> bool:
        if self._message_budget.take(device):
            return True
        self._refuse(device, "rate_limited", f"{kind} from {device}: over {self.limits.message_rate:g} messages/s")
        return False

    def _answer(self, link: Link, message) -> None:
        device = protocol.device_of(message.topic, "chunks/request")
        if device is None:
            self._drop_invalid("chunk_request", None, SchemaError(f"topic {message.topic[:80]!r}", "bad_topic"))
            return
        if not self._within_budget(device, "chunk request"):
            return
        try:
            request = protocol.parse_request(message.payload, device)
        except SchemaError as error:
            self._drop_invalid("chunk_request", device, error)
            return
        sha, indices = request["sha256"], request["indices"]
        topic = protocol.chunk_topic(device)
        try:
            release = self.access.release_for(device, sha)
        except Refused as refusal:
            self._refuse(device, refusal.reason, str(refusal))
            if refusal.reply:  # one answer is enough: the device gives up on the first error
                link.client.publish(topic, protocol.encode_chunk(sha, indices[0], b"", error=refusal.reply), qos=1)
            return
        if not self._chunk_budget.take(device, len(indices)):
            self._refuse(device, "rate_limited", f"{device}: over {self.limits.chunk_rate:g} chunks/s")
            return
        archive = self.fleet.archive(sha)
        for index in indices:
            data, error = b"", "no such chunk"
            if archive is not None and index < len(release.chunks):
                try:
                    data, error = read_chunk(archive, release.chunk_size, index), None
                except OSError as failure:  # the archive went away under us: say so, keep serving
                    error = f"cannot read the archive: {failure.strerror}"
            if data:
                self.bytes_served += len(data)
                self.chunks_served += 1
            else:
                self.refused["no_such_chunk"] += 1
            payload = protocol.encode_chunk(sha, index, data, error=None if data else error or "no such chunk")
            link.client.publish(topic, payload, qos=1)

    def _take_report(self, message, states: dict[str, dict]) -> tuple[str, str] | None:
        """Record a device's state report; (device, the group to look at again), if any: the group is the one
        the registry has the device in. A report from a device that is not enrolled is counted, kept for
        `status` and used for nothing."""
        device = protocol.device_of(message.topic, "state")
        if device is None:
            self._drop_invalid("state", None, SchemaError(f"topic {message.topic[:80]!r}", "bad_topic"))
            return None
        if not self._within_budget(device, "state report"):
            return None
        if not message.payload:  # the retained report was cleared
            states.pop(device, None)
            return None
        try:
            state = protocol.parse_state(message.payload, device)
        except SchemaError as error:
            self._drop_invalid("state", device, error)
            states.pop(device, None)  # its last word is unreadable: not trusted
            return None
        states[device] = state
        try:
            group = self.fleet.registry.group_of(device)
        except RegistryError as error:
            self.ignored["registry_unreadable"] += 1
            self._log.log(logging.ERROR, "registry", "%s", error)
            return None
        if group is None:
            self.ignored["unenrolled"] += 1
            self._log.log(logging.WARNING, "unenrolled", "ignored the report of %s: not enrolled", device)
            return None
        if state["group"] != group:
            self.ignored["group_mismatch"] += 1
            self._log.log(
                logging.WARNING,
                "group_mismatch",
                "device %s reports group %s, enrolled in %s: its report is not used",
                device,
                state["group"],
                group,
            )
        return device, group

    def serve(self, stop: threading.Event, auto_promote: bool = False, auto_halt: bool = True, on_event=None) -> None:
        """Answer chunk requests; with keys, halt failing rollouts (and promote committed canaries)."""
        states: dict[str, dict] = {}
        changed: queue.Queue = queue.Queue()
        holder: dict = {}

        def on_message(message):
            if message.topic.endswith("/chunks/request"):  # the two subscriptions differ in this suffix
                self._answer(holder["link"], message)
                return
            reported = self._take_report(message, states)
            if reported:
                changed.put(reported)

        holder["link"] = link = self._link(
            [protocol.chunk_request_topic("+"), protocol.state_topic("+")], on_message, client_id="edge-fleet-serve"
        )
        self._link_errors = link.callback_errors
        saved_at, saved = 0.0, None
        try:
            while not stop.is_set():
                if time.monotonic() - saved_at > METRICS_EVERY_S and self.metrics() != saved:
                    saved, saved_at = self.metrics(), time.monotonic()
                    self._save_metrics(running=True)
                try:
                    device, group = changed.get(timeout=0.5)
                except queue.Empty:
                    continue
                if self.keys:
                    try:
                        self.catch_up(device, group)
                    except Exception:  # the broker or the registry: the device's next report tries again
                        self._log.log(logging.ERROR, "catch_up", "device %s: sending failed", device, exc_info=True)
                    try:
                        self._watch(group, dict(states), auto_promote, auto_halt, on_event)
                    except Exception:  # a bad rollout file must not end the server for every group
                        self._log.log(logging.ERROR, "watch", "group %s: watching failed", group, exc_info=True)
        finally:
            link.stop()
            self._save_metrics(running=False)

    # What a group's rollout stage asks of a device that has not been sent it yet: (action, desired stage).
    _CURRENT = {
        "canary": ("install", "canary"),
        "all": ("install", "all"),
        "halted": ("halt", "all"),
        "rolled_back": ("rollback", "all"),
    }

    def catch_up(self, device: str, group: str) -> bool:
        """Send the group's current desired state to a member it was never sent to: a device enrolled (or
        moved in) since the group's last change, or any member of a rollout recorded before the registry
        (published on the group topic, which devices no longer read). True if it sent one."""
        rollout = self.fleet.rollout(group)
        if rollout is None or device in rollout.get("devices", ()):
            return False  # the common case, decided without the lock
        with self.fleet.locked():
            rollout = self.fleet.rollout(group)
            if rollout is None or device in rollout.get("devices", ()) or rollout["stage"] not in self._CURRENT:
                return False
            if device not in self.roster().members(group):
                return False  # removed, moved or pinned since its report
            action, stage = self._CURRENT[rollout["stage"]]
            self._publish_desired({**rollout, "device": device}, action, stage, rollout.get("reason", ""))
            rollout["devices"] = sorted({*rollout.get("devices", ()), device})
            self.fleet.save_rollout(rollout, f"sent to {device}, which had not been sent this {action}")
        log.info("group %s: sent the current desired state (%s) to %s", group, action, device)
        return True

    def _watch(self, group: str, states: dict, auto_promote: bool, auto_halt: bool, on_event) -> None:
        try:
            rollout = self.fleet.rollout(group)
        except (ReleaseError, ValueError):
            return
        try:
            trusted = self.roster().trusted(states, group)
        except RegistryError as error:
            self._log.log(logging.ERROR, "registry", "group %s: %s", group, error)
            return
        decision, why = rollouts.assess(rollout, trusted)
        try:
            if decision == "halt" and auto_halt:
                self.halt(group, why)
            elif decision == "promote" and auto_promote:
                self.promote(group, states=states)
            else:
                return
        except FleetError as error:
            log.error("group %s: %s", group, error)
            return
        log.warning("group %s: %s (%s)", group, decision, why)
        if on_event:
            on_event(group, decision, why)
