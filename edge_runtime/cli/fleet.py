"""`edge-runtime fleet`: enroll devices in groups, sign releases, publish them to a device group (canaries
first) or one device, promote, halt, roll back, serve chunks, lay out archives for HTTP mirrors and watch the
fleet's reports (docs/fleet.md)."""

from __future__ import annotations

import collections
import datetime as dt
import functools
import signal
import threading
import time
from pathlib import Path

import click

from .common import LOCAL_BROKER, broker_options, load_device
from .output import fail, json_option, print_json, print_table


def fleet_options(func):
    """The broker options every command shares (cli/common.py), defaulting to a local broker, and the
    fleet directory."""

    @broker_options
    @click.option(
        "--fleet-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Releases and rollouts (default: $EDGE_RUNTIME_HOME/fleet).",
    )
    @functools.wraps(func)
    def wrapper(*args, config_file, uplink, fleet_dir, **kwargs):
        from ..fleet.fleetdir import FleetDir

        broker = load_device(config_file, uplink=uplink).broker(default_url=LOCAL_BROKER)
        return func(*args, broker=broker, fleet=FleetDir(fleet_dir), **kwargs)

    return wrapper


key_option = click.option(
    "--key",
    "key_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    envvar="EDGE_RUNTIME_FLEET_KEY",
    help="Fleet signing key (repeat for k-of-n; env EDGE_RUNTIME_FLEET_KEY).",
)


desired_ttl_option = click.option(
    "--desired-ttl",
    default="7d",
    show_default=True,
    help="How long the desired state this publishes stays valid (90s, 45m, 12h, 30d); devices refuse it after.",
)


def _keys(key_files) -> list:
    from .. import signing

    return [signing.load_private_key(Path(path)) for path in key_files]


def _manager(broker, fleet, key_files=(), desired_ttl="7d", limits=None):
    from ..fleet.manager import Manager
    from ..fleet.release import parse_duration

    return Manager(broker, fleet, _keys(key_files), desired_ttl_s=parse_duration(desired_ttl), limits=limits)


def _when(stamp) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if stamp else ""


def _show_rollout(rollout: dict, as_json: bool) -> None:
    if as_json:
        print_json(rollout)
        return
    canaries = f" canaries: {', '.join(rollout['canaries'])}" if rollout["canaries"] else ""
    reason = f" ({rollout['reason']})" if rollout.get("reason") else ""
    who = f"device {rollout['device']}" if rollout.get("device") else f"group {rollout['group']}"
    sent = f"; sent to {len(rollout['devices'])} enrolled devices" if "devices" in rollout else ""
    click.echo(
        f"{who}: {rollout['release']['ref']} (release {rollout['release']['number']}) "
        f"{rollout['stage']}{reason}{canaries}{sent}"
    )


@click.group()
def fleet():
    """Roll signed releases out to device groups over MQTT: canaries first, halt on failure."""


@fleet.group()
def release():
    """Signed release records for bundle archives."""


@release.command("create")
@click.argument("archive", type=click.Path(exists=True, path_type=Path))
@click.option("--group", "groups", multiple=True, required=True, help="Device group allowed to install it (repeat).")
@click.option("--expires", default="30d", show_default=True, help="Validity: 90s, 45m, 12h, 30d.")
@key_option
@click.option("--release", "number", type=click.IntRange(1), help="Release number (default: the bundle's).")
@click.option("--chunk-size", type=click.IntRange(1024, 200 * 1024), default=128 * 1024, show_default=True)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    metavar="URL",
    help="HTTP(S) base URL serving the archive as URL/<sha256>.erb (`fleet mirror sync`); devices try the "
    "mirrors in this order, then MQTT (repeat).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Default: ARCHIVE.release.json.")
@json_option
def create(archive, groups, expires, key_files, number, chunk_size, mirrors, out, as_json):
    """Sign a release record for ARCHIVE (.erb; a bundle directory is packed to DIR.erb first)."""
    from .. import bundle
    from ..fleet import release as releases

    if not key_files:
        raise click.UsageError("give at least one --key")
    if archive.is_dir():
        archive = bundle.pack(archive, archive.with_name(archive.name + bundle.ARCHIVE_SUFFIX))
    envelope = releases.create(
        archive,
        list(groups),
        _keys(key_files),
        releases.parse_duration(expires),
        release=number,
        chunk_size=chunk_size,
        mirrors=list(mirrors),
    )
    out = releases.write(envelope, out or archive.with_name(archive.name + releases.SUFFIX))
    signed = envelope["signed"]
    if as_json:
        print_json(
            {"file": str(out), **signed, "archive": {**signed["archive"], "chunks": len(signed["archive"]["chunks"])}}
        )
        return
    click.echo(
        f"release {signed['release']}: {signed['bundle']['name']}@{signed['bundle']['version']} for "
        f"{', '.join(signed['groups'])}, {signed['archive']['size']:,} bytes in "
        f"{len(signed['archive']['chunks'])} chunks, expires {_when(signed['expires_at'])}"
    )
    for url in signed.get("mirrors", []):
        click.echo(f"mirror {releases.mirror_url(url, signed['archive']['sha256'])}")
    click.echo(f"wrote {out}")


@fleet.group()
def mirror():
    """Content-addressed copies of the archives for HTTP(S) mirrors (docs/fleet.md#mirrors)."""


@mirror.command("sync")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("release_files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--fleet-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Whose published releases to sync when no RELEASE_FILE is given (default: $EDGE_RUNTIME_HOME/fleet).",
)
@json_option
def mirror_sync(directory, release_files, fleet_dir, as_json):
    """Lay out archives in DIRECTORY as <sha256>.erb (+ <sha256>.release.json) for a static server: those of
    RELEASE_FILEs (each archive beside its record; sync before `publish`), else every published release.
    Idempotent; files appear atomically; nothing is deleted."""
    from ..fleet import mirror as mirrors
    from ..fleet.fleetdir import FleetDir

    if release_files:
        sources = [mirrors.from_release_file(path) for path in release_files]
    else:
        sources = mirrors.from_fleet_dir(FleetDir(fleet_dir))
    synced = mirrors.sync(directory, sources)
    if as_json:
        print_json({"directory": str(directory), "archives": synced})
        return
    for entry in synced:
        what = entry.get("bundle") or {}
        release = f" {what.get('name')}@{what.get('version')} (release {entry['release']})" if what else ""
        click.echo(f"{entry['action']:9} {Path(entry['file']).name}{release}")
    counts = collections.Counter(entry["action"] for entry in synced)
    click.echo(f"{directory}: {len(synced)} archive{'s' if len(synced) != 1 else ''} ({_counts(counts)})")


@fleet.command()
@click.argument("release_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--group", help="Publish to every device enrolled in this group.")
@click.option(
    "--device",
    help="Publish to this one enrolled device only (the release must be for its group); it then follows this "
    "desired state, not its group's rollouts, until `fleet device unpin`.",
)
@click.option(
    "--canary",
    "canary_pct",
    type=click.FloatRange(0, 100),
    default=0.0,
    show_default=True,
    help="Percent of the group's enrolled devices reporting that group that get it first (0: everyone at once).",
)
@click.option(
    "--archive",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The bundle archive (default: RELEASE_FILE without .release.json).",
)
@click.option(
    "--discover",
    "discover_s",
    type=click.FloatRange(0.1, 60),
    default=1.5,
    show_default=True,
    help="Seconds to collect device reports before choosing canaries.",
)
@key_option
@desired_ttl_option
@fleet_options
@json_option
def publish(
    release_file, group, device, canary_pct, archive, discover_s, key_files, desired_ttl, broker, fleet, as_json
):
    """Publish RELEASE_FILE as the desired state of each device enrolled in --group (retained, on each
    device's own topic), or of the one --device."""
    from ..fleet import release as releases

    if (group is None) == (device is None):
        raise click.UsageError("give --group or --device (one of them)")
    if device is not None and canary_pct:
        raise click.UsageError("--canary is for a group; --device publishes to that device only")
    if archive is None:
        name = release_file.name
        if not name.endswith(releases.SUFFIX):
            raise click.UsageError("give --archive (RELEASE_FILE does not end in .release.json)")
        archive = release_file.with_name(name[: -len(releases.SUFFIX)])
        if not archive.is_file():
            raise click.UsageError(f"{archive}: not found; give --archive")
    manager = _manager(broker, fleet, key_files, desired_ttl)
    if device is not None:
        rollout = manager.publish_device(release_file, archive, device)
    else:
        rollout = manager.publish(release_file, archive, group, canary_pct, discover_s)
        if not rollout["devices"]:
            click.echo(
                f"warning: no device is enrolled in group {group}: sent to none (`fleet device add ID --group "
                f"{group}`; `fleet serve --key` sends it to devices enrolled later)",
                err=True,
            )
    _show_rollout(rollout, as_json)


@fleet.command()
@click.option("--group", required=True)
@click.option("--force", is_flag=True, help="Promote even if not every canary has committed.")
@key_option
@desired_ttl_option
@fleet_options
@json_option
def promote(group, force, key_files, desired_ttl, broker, fleet, as_json):
    """Send the canaries' release to the whole group (only once every canary committed)."""
    _show_rollout(_manager(broker, fleet, key_files, desired_ttl).promote(group, force), as_json)


@fleet.command()
@click.option("--group", required=True)
@click.option("--reason", default="halted by operator", show_default=True)
@key_option
@desired_ttl_option
@fleet_options
@json_option
def halt(group, reason, key_files, desired_ttl, broker, fleet, as_json):
    """Stop the group's rollout: devices that have not started do not start."""
    _show_rollout(_manager(broker, fleet, key_files, desired_ttl).halt(group, reason), as_json)


@fleet.command()
@click.option("--group", required=True)
@click.option("--reason", default="rolled back by operator", show_default=True)
@key_option
@desired_ttl_option
@fleet_options
@json_option
def rollback(group, reason, key_files, desired_ttl, broker, fleet, as_json):
    """Devices running the group's release roll back to their previous model."""
    _show_rollout(_manager(broker, fleet, key_files, desired_ttl).rollback(group, reason), as_json)


def _age(now: float, stamp) -> str:
    if not stamp:
        return ""
    seconds = max(0, now - stamp)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago" if seconds < 7200 else _when(stamp)


@fleet.command()
@click.option("--group", help="Only this group.")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(0.1, 60),
    default=1.5,
    show_default=True,
    help="Seconds to collect the devices' retained reports.",
)
@fleet_options
@json_option
def status(group, wait_s, broker, fleet, as_json):
    """Devices (active/previous model, update phase, last seen, escalation rate) and rollouts."""
    from .common import percent

    report = _manager(broker, fleet).status(wait_s)
    if group:  # enrolled devices by the registry's group; the others by what they claim
        report["devices"] = [d for d in report["devices"] if d["registry_group"] == group]
        report["not_reporting"] = [d for d in report["not_reporting"] if d["registry_group"] == group]
        report["unenrolled"] = [d for d in report["unenrolled"] if d["group"] == group]
        report["invalid_reports"] = [d for d in report["invalid_reports"] if d["registry_group"] in (group, None)]
        report["rollouts"] = [r for r in report["rollouts"] if r["group"] == group]
        report["device_rollouts"] = [r for r in report["device_rollouts"] if r["group"] == group]
    if as_json:
        print_json(report)
        return
    now = report["now"]
    rows = [
        [
            d["device"],
            d["registry_group"],
            f"{d['group']} (!)" if d["group_mismatch"] else d["group"],
            d.get("active") or "-",
            d.get("previous") or "-",
            d.get("phase"),
            d.get("release") or "",
            _age(now, d.get("reported_at")),
            percent(d.get("escalation_rate")),
            _note(d)[:70],
        ]
        for d in report["devices"]
    ]
    rows += [
        [bad["device"][:40], bad["registry_group"] or "-", "-", "-", "-", "invalid", "", "", "", bad["reason"][:70]]
        for bad in report["invalid_reports"]
    ]
    rows += [
        [d["device"], d["registry_group"], "-", "-", "-", "no report", "", "", "", ""] for d in report["not_reporting"]
    ]
    rows += [
        [
            d["device"][:40],
            "-",
            d["group"],
            d.get("active") or "-",
            d.get("previous") or "-",
            d.get("phase"),
            d.get("release") or "",
            _age(now, d.get("reported_at")),
            "",
            "not enrolled: ignored",
        ]
        for d in report["unenrolled"]
    ]
    print_table(
        ["device", "group", "reports", "active", "previous", "phase", "release", "last seen", "escalation", "note"],
        rows,
        title="devices",
    )
    rows = [
        [
            r["group"],
            r["release"]["ref"],
            r["release"]["number"],
            r["stage"],
            len(r["canaries"]),
            r.get("reason") or r["assessment"],
        ]
        for r in report["rollouts"]
    ]
    rows += [
        [f"device {r['device']}", r["release"]["ref"], r["release"]["number"], r["stage"], "", r["assessment"]]
        for r in report["device_rollouts"]
    ]
    if rows:
        print_table(["group", "release", "number", "stage", "canaries", "why"], rows, title="rollouts")
    if report["serve"]:
        click.echo(_serve_line(report["serve"], now))


def _counts(counts: dict) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "none"


def _note(device: dict) -> str:
    """What needs the operator first: a device reporting another group than it is enrolled in, an update
    state the device cannot read (it refuses every update until it is repaired), then its last error, then
    its note."""
    if device.get("group_mismatch"):
        return f"reports group {device['group']}, enrolled in {device['registry_group']}: report not used"
    if device.get("state_error"):
        return f"updates refused: {device['state_error']}"
    return device.get("last_error") or device.get("note") or ""


def _serve_line(metrics: dict, now: float) -> str:
    """One line on what `fleet serve` counted: chunks served, messages dropped and refused, by reason."""
    if "error" in metrics:
        return f"fleet serve: {metrics['error']}"
    state = "running" if metrics.get("running") else "stopped"
    return (
        f"fleet serve ({state}, {_age(now, metrics.get('updated_at'))}): {metrics.get('chunks_served', 0)} chunks "
        f"served; invalid: {_counts(metrics.get('invalid') or {})}; refused: {_counts(metrics.get('refused') or {})}"
        f"; reports ignored: {_counts(metrics.get('ignored') or {})}"
    )


def _limit_option(name: str, field: str, help_text: str):
    from ..fleet.manager import ServeLimits

    return click.option(
        name,
        field,
        type=click.FloatRange(0.1, 100_000),
        default=getattr(ServeLimits(), field),
        show_default=True,
        help=help_text,
    )


@fleet.command()
@click.option("--auto-promote", is_flag=True, help="Promote a canary rollout as soon as every canary committed.")
@click.option("--no-auto-halt", is_flag=True, help="Do not halt a rollout when a canary fails.")
@_limit_option("--chunk-rate", "chunk_rate", "Chunks per second one device may fetch.")
@_limit_option("--chunk-burst", "chunk_burst", "Chunks one device may fetch at once after a pause.")
@_limit_option("--message-rate", "message_rate", "Messages per second one device may send (requests, reports).")
@_limit_option("--message-burst", "message_burst", "Messages one device may send at once after a pause.")
@key_option
@desired_ttl_option
@fleet_options
def serve(auto_promote, no_auto_halt, key_files, desired_ttl, broker, fleet, **limits):
    """Answer devices' chunk requests and watch their reports until SIGTERM/SIGINT. Chunks go only to
    enrolled devices of a group the release is for; over-budget and malformed messages are dropped and counted.
    With --key it also sends a group's current desired state to members enrolled since its last change."""
    import logging

    from ..fleet.manager import ServeLimits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    manager = _manager(broker, fleet, key_files, desired_ttl, ServeLimits(**limits))
    if not manager.keys:
        click.echo("no --key: serving chunks only (no automatic halt/promote)", err=True)
    started = time.monotonic()
    try:
        manager.serve(
            stop,
            auto_promote=auto_promote,
            auto_halt=not no_auto_halt,
            on_event=lambda g, d, why: click.echo(f"group {g}: {d} ({why})"),
        )
    except KeyboardInterrupt:
        pass
    metrics = manager.metrics()
    click.echo(
        f"served {manager.chunks_served} chunks, {manager.bytes_served:,} bytes in {time.monotonic() - started:.0f} s; "
        f"invalid: {_counts(metrics['invalid'])}; refused: {_counts(metrics['refused'])}; "
        f"reports ignored: {_counts(metrics['ignored'])}"
    )


# --- the device registry ------------------------------------------------------------------------------


def fleet_dir_option(func):
    """The registry commands need no broker: only the fleet directory."""

    @click.option(
        "--fleet-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Releases, rollouts and the device registry (default: $EDGE_RUNTIME_HOME/fleet).",
    )
    @functools.wraps(func)
    def wrapper(*args, fleet_dir, **kwargs):
        from ..fleet.fleetdir import FleetDir

        return func(*args, fleet=FleetDir(fleet_dir), **kwargs)

    return wrapper


def _show_enrollment(enrollment, as_json: bool, verb: str) -> None:
    if as_json:
        print_json({"ok": True, **enrollment.to_dict()})
    else:
        site = f" on site {enrollment.site}" if enrollment.site else ""
        click.echo(f"{verb} {enrollment.device} in group {enrollment.group}{site}")


@fleet.group()
def device():
    """The device registry: which devices the manager serves and the group each is in (devices' own claims
    are only checked against it)."""


site_help = "connects through the site broker whose bridge identity (certificate CN) is this, site-<name>"


@device.command("add")
@click.argument("device_id", required=False)
@click.option("--group", required=True, help="The group the device is enrolled in.")
@click.option("--site", help=f"The device {site_help} (`fleet acl`). Default: none, it connects centrally.")
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The device's PEM client certificate: its subject CN (the broker's username for it) is the id.",
)
@fleet_dir_option
@json_option
def device_add(device_id, group, site, cert, fleet, as_json):
    """Enroll DEVICE_ID (or the CN of --cert) in --group, and on --site if it connects through a site broker."""
    from ..fleet.registry import RegistryError, device_id_from_certificate

    try:
        if (device_id is None) == (cert is None):
            raise RegistryError("give a DEVICE_ID or --cert PEM (one of them)")
        source = "cli"
        if cert is not None:
            device_id, source = device_id_from_certificate(cert.read_bytes(), str(cert)), "cert"
        with fleet.locked():
            enrollment = fleet.registry.add(device_id, group, source, site)
    except RegistryError as error:
        fail(str(error), as_json)
    _show_enrollment(enrollment, as_json, "enrolled")


@device.command("move")
@click.argument("device_id")
@click.option("--group", help="The group it is in from now on.")
@click.option("--site", help=f"From now on the device {site_help} (then regenerate `fleet acl`).")
@click.option("--no-site", is_flag=True, help="From now on the device connects to the central broker directly.")
@fleet_dir_option
@json_option
def device_move(device_id, group, site, no_site, fleet, as_json):
    """Move an enrolled device to another group (it gets that group's next change; its own desired state from
    `publish --device`, if any, is dropped), to another site, or both."""
    from ..fleet.registry import UNCHANGED, RegistryError

    if site is not None and no_site:
        raise click.UsageError("give --site or --no-site, not both")
    if group is None and site is None and not no_site:
        raise click.UsageError("give --group, --site or --no-site")
    try:
        enrollment = fleet.move_device(device_id, group, None if no_site else site if site is not None else UNCHANGED)
    except RegistryError as error:
        fail(str(error), as_json)
    _show_enrollment(enrollment, as_json, "moved")


@device.command("remove")
@click.argument("device_id")
@fleet_dir_option
@json_option
def device_remove(device_id, fleet, as_json):
    """Unenroll a device: no desired state or chunk goes to it any more, its reports are ignored. (Its retained
    desired state stays on the broker until cleared: `mosquitto_pub -r -n -t fleet/devices/ID/desired`.)"""
    from ..fleet.registry import RegistryError

    try:
        fleet.remove_device(device_id)
    except RegistryError as error:
        fail(str(error), as_json)
    if as_json:
        print_json({"ok": True, "device": device_id, "removed": True})
    else:
        click.echo(f"removed {device_id}")


@device.command("unpin")
@click.argument("device_id")
@fleet_dir_option
@json_option
def device_unpin(device_id, fleet, as_json):
    """Drop the desired state `publish --device` gave DEVICE_ID: its group's next change reaches it again."""
    from ..fleet.registry import RegistryError

    try:
        with fleet.locked():
            dropped = fleet.unpin(device_id)
    except RegistryError as error:
        fail(str(error), as_json)
    if not dropped:
        fail(f"device {device_id} has no desired state of its own", as_json)
    if as_json:
        print_json({"ok": True, "device": device_id, "unpinned": True})
    else:
        click.echo(f"{device_id} follows its group again")


@device.command("list")
@click.option("--group", help="Only this group.")
@click.option("--site", help="Only the devices on this site.")
@fleet_dir_option
@json_option
def device_list(group, site, fleet, as_json):
    """The enrolled devices, their groups and sites."""
    from ..fleet.registry import RegistryError

    try:
        enrollments = fleet.registry.enrollments()
        pinned = {r["device"]: r["release"]["ref"] for r in fleet.device_rollouts()}
    except RegistryError as error:
        fail(str(error), as_json)
    if group:
        enrollments = [e for e in enrollments if e.group == group]
    if site:
        enrollments = [e for e in enrollments if e.site == site]
    if as_json:
        print_json([{**e.to_dict(), "pinned": pinned.get(e.device)} for e in enrollments])
        return
    print_table(
        ["device", "group", "site", "enrolled", "from", "own desired state"],
        [
            [e.device, e.group, e.site or "", _when(e.enrolled_at), e.source, pinned.get(e.device, "")]
            for e in enrollments
        ],
        title="enrolled devices",
    )


@fleet.command("acl")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write it to this file, atomically (default: print it).",
)
@fleet_dir_option
@json_option
def acl_command(out, fleet, as_json):
    """The central broker's ACL (mosquitto acl_file) from the device registry: the device, worker and fleet
    rules, and for each site that has devices a `user site-<name>` block naming exactly their topics (a site
    with none gets no block). Run it after a device's site changes, then reload mosquitto, which re-reads its
    ACL on SIGHUP: `kill -HUP $(pidof mosquitto)`."""
    from ..fleet import acl
    from ..fleet.registry import RegistryError

    try:
        sites = fleet.registry.sites()
        text = acl.render(sites, f"the device registry {fleet.registry.path.resolve()}")
    except RegistryError as error:
        fail(str(error), as_json)
    if out is not None:
        acl.write(out, text)
    if as_json:
        print_json({"ok": True, "file": str(out) if out else None, "sites": sites, **({} if out else {"acl": text})})
    elif out is None:
        click.echo(text, nl=False)
    else:
        devices = sum(len(ids) for ids in sites.values())
        click.echo(f"wrote {out}: {len(sites)} sites, {devices} devices on them; reload the broker: kill -HUP")
