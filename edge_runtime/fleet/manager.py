"""The fleet manager: publish signed desired states, answer chunk requests, watch device reports,
promote canary rollouts that committed and halt the ones that failed."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from pathlib import Path

from ..mqtt import BrokerConfig, Link, LinkHandlers, Subscription
from . import protocol
from . import release as releases
from . import rollout as rollouts
from .chunks import read_chunk
from .errors import FleetError, ReleaseError
from .fleetdir import FleetDir, next_seq

log = logging.getLogger(__name__)


class Manager:
    def __init__(
        self,
        broker: BrokerConfig,
        fleet_dir: FleetDir,
        keys=(),
        timeout_s: float = 15.0,
        desired_ttl_s: int = protocol.DEFAULT_DESIRED_TTL_S,
    ):
        self.broker, self.fleet, self.keys, self.timeout_s = broker, fleet_dir, list(keys), timeout_s
        self.desired_ttl_s = desired_ttl_s  # devices refuse a desired state older than this
        self.bytes_served = 0
        self.chunks_served = 0

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

    def device_states(self, wait_s: float = 1.0) -> dict[str, dict]:
        """Every device's retained report (the broker sends them on subscribe)."""
        states: dict[str, dict] = {}

        def collect(message):
            state = protocol.decode_state(message.payload)
            device = protocol.device_of(message.topic, "state")
            if state and device == state["device"]:
                states[device] = state

        link = self._link([protocol.state_topic("+")], collect)
        time.sleep(wait_s)
        link.stop()
        return dict(states)

    def _publish_desired(self, rollout: dict, action: str, stage: str, reason: str = "") -> None:
        if not self.keys:
            raise FleetError("signing desired states needs the fleet key (--key)")
        envelope = releases.read(self.fleet.releases / f"{rollout['release']['sha256']}.release.json")
        desired = protocol.build_desired(
            self.keys,
            scope="group",
            target=rollout["group"],
            seq=rollout["seq"],
            action=action,
            release=envelope,
            stage=stage,
            canaries=rollout["canaries"],
            reason=reason,
            ttl_s=self.desired_ttl_s,
        )
        link = self._link()
        try:
            info = link.client.publish(
                protocol.group_desired_topic(rollout["group"]), protocol.encode(desired), qos=1, retain=True
            )
            info.wait_for_publish(self.timeout_s)
            if not info.is_published():
                raise FleetError(f"broker did not acknowledge the desired state for {rollout['group']}")
        finally:
            link.stop()

    # --- commands ---------------------------------------------------------------------------------
    def publish(
        self, release_file: Path, archive: Path, group: str, canary_pct: float = 0.0, discover_s: float = 1.0
    ) -> dict:
        envelope = releases.read(release_file)
        signed = envelope.get("signed") if isinstance(envelope, dict) else None
        target = releases.check_shape(signed)
        if releases.check_group(group) not in target.groups:
            raise ReleaseError(f"release {target.number} is for group(s) {', '.join(target.groups)}, not {group}")
        if time.time() > target.expires_at:
            raise ReleaseError(f"release {target.number} expired at {releases.iso(target.expires_at)}")
        self.fleet.add_release(envelope, target, Path(archive))
        canaries: list[str] = []
        if 0 < canary_pct < 100:
            devices = rollouts.group_devices(self.device_states(discover_s), group)
            if not devices:
                raise FleetError(
                    f"no device of group {group} has reported yet: cannot pick canaries "
                    "(publish with --canary 0 to send to all)"
                )
            canaries = rollouts.choose_canaries(devices, canary_pct, target.sha256)
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
            self._publish_desired(rollout, "install", rollout["stage"])
            return self.fleet.save_rollout(rollout, f"published {target.ref} (release {target.number})")

    def _change(self, group: str, stage: str, action: str, desired_stage: str, reason: str, event: str) -> dict:
        with self.fleet.locked():
            rollout = self.fleet.rollout(group)
            if rollout is None:
                raise FleetError(f"group {group}: nothing published")
            rollout.update(seq=next_seq(rollout), stage=stage, reason=reason)
            self._publish_desired(rollout, action, desired_stage, reason)
            return self.fleet.save_rollout(rollout, event)

    def promote(self, group: str, force: bool = False, states: dict | None = None) -> dict:
        rollout = self.fleet.rollout(group)
        if rollout is None:
            raise FleetError(f"group {group}: nothing published")
        if rollout["stage"] != "canary":
            raise FleetError(f"group {group}: rollout is {rollout['stage']}, not at the canary stage")
        decision, why = rollouts.assess(rollout, states if states is not None else self.device_states())
        if decision != "promote" and not force:
            raise FleetError(f"group {group}: cannot promote ({why}); --force overrides")
        return self._change(group, "all", "install", "all", "", f"promoted: {why}")

    def halt(self, group: str, reason: str = "halted by operator") -> dict:
        return self._change(group, "halted", "halt", "all", reason, f"halted: {reason}")

    def rollback(self, group: str, reason: str = "rolled back by operator") -> dict:
        return self._change(group, "rolled_back", "rollback", "all", reason, f"rolled back: {reason}")

    def status(self, wait_s: float = 1.0) -> dict:
        states = self.device_states(wait_s)
        result = []
        for rollout in self.fleet.rollouts():
            decision, why = rollouts.assess(rollout, states)
            result.append(
                {
                    **{k: v for k, v in rollout.items() if k != "history"},
                    "assessment": why if decision is None else f"{decision}: {why}",
                    "last_event": rollout["history"][-1] if rollout.get("history") else None,
                }
            )
        return {"devices": [states[d] for d in sorted(states)], "rollouts": result, "now": time.time()}

    # --- the long-running side --------------------------------------------------------------------
    def _answer(self, link: Link, message) -> None:
        device = protocol.device_of(message.topic, "chunks/request")
        request = protocol.decode_request(message.payload)
        if device is None or request is None:
            return
        sha = request["sha256"]
        archive = self.fleet.archive(sha)
        topic = protocol.chunk_topic(device)
        for index in request["indices"]:
            if archive is None:
                payload = protocol.encode_chunk(sha, index, b"", error="unknown release")
            else:
                target = releases.read(self.fleet.releases / f"{sha}.release.json")["signed"]["archive"]
                data = read_chunk(archive, target["chunk_size"], index)
                payload = protocol.encode_chunk(sha, index, data, error=None if data else "no such chunk")
                self.bytes_served += len(data)
                self.chunks_served += 1
            link.client.publish(topic, payload, qos=1)

    def serve(self, stop: threading.Event, auto_promote: bool = False, auto_halt: bool = True, on_event=None) -> None:
        """Answer chunk requests; with keys, halt failing rollouts (and promote committed canaries)."""
        states: dict[str, dict] = {}
        changed: queue.Queue = queue.Queue()
        holder: dict = {}

        def on_message(message):
            if message.topic.endswith("/chunks/request"):
                self._answer(holder["link"], message)
                return
            state = protocol.decode_state(message.payload)
            if state and protocol.device_of(message.topic, "state") == state["device"]:
                states[state["device"]] = state
                changed.put(state.get("group"))

        holder["link"] = link = self._link(
            [protocol.chunk_request_topic("+"), protocol.state_topic("+")], on_message, client_id="edge-fleet-serve"
        )
        try:
            while not stop.is_set():
                try:
                    group = changed.get(timeout=0.5)
                except queue.Empty:
                    continue
                if group and self.keys:
                    self._watch(group, dict(states), auto_promote, auto_halt, on_event)
        finally:
            link.stop()

    def _watch(self, group: str, states: dict, auto_promote: bool, auto_halt: bool, on_event) -> None:
        try:
            rollout = self.fleet.rollout(group)
        except (ReleaseError, ValueError):
            return
        decision, why = rollouts.assess(rollout, states)
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
