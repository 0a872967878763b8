"""The central broker's ACL (mosquitto acl_file), rendered from the device registry: `edge-runtime fleet acl`.

Devices that connect centrally need no entry: pattern rules give every user its own topics. A site broker's
bridge reaches the central broker as one user (its certificate's CN, `site-<name>`) for all of its devices,
so each site that has devices gets a block naming exactly their topics; a site with none gets no block and
can do nothing. The fixed part is here and nowhere else: deploy/mosquitto/acl is this module's output for
the example registry in EXAMPLE (a test checks it), and deploy/mosquitto/site-acl holds the same pattern
rules.
"""

from __future__ import annotations

from pathlib import Path

from ..fsutil import atomic_write_bytes
from .registry import check_device_id, check_site

# A device's own topics, `{}` its id: pattern rules centrally and on a site broker (%u), and what a site's
# block names for each of its devices (the topics site-bridge.conf carries across).
DEVICE_TOPICS = (
    ("write", "edge/{}/escalations"),
    ("read", "edge/{}/answers"),
    ("read", "fleet/devices/{}/desired"),
    ("write", "edge/{}/state"),
    ("write", "edge/{}/chunks/request"),
    ("read", "edge/{}/chunks"),
)

# The registry deploy/mosquitto/acl is rendered from: the site and devices of make-dev-certs.sh's examples and
# tests/test_site_bridge.py.
EXAMPLE = {"site-dev": ["dev-0", "dev-1", "dev-2"]}
EXAMPLE_ORIGIN = "an example registry: site-dev with dev-0, dev-1 and dev-2"

HEADER = """\
# edge-runtime central broker ACL, written by `edge-runtime fleet acl` from
# {origin}.
# Regenerate it after a device is enrolled on, moved to or removed from a site, then reload mosquitto
# (kill -HUP: it re-reads its ACL file). Usernames are certificate CNs (use_identity_as_username).
# "worker", "fleet" and site-* are reserved names: never issue a device certificate with those CNs.
"""

DEVICES = """
# Every device (pattern rules apply to all users): its own escalations out, its own answers in,
# its own desired state read-only. The fleet manager signs a desired state for each device enrolled in
# its registry and publishes it on that device's topic (docs/fleet.md, "Device registry"), so no device
# reads fleet/groups/<g>/desired: a device cannot receive another group's release by claiming that group.
# Model updates (docs/fleet.md): its own retained state report and chunk requests out, its chunks in.
{patterns}
"""

ROLES = """
# Upstream workers: read every escalation, write every answer.
user worker
topic read edge/+/escalations
topic write edge/+/answers

# The fleet manager alone publishes fleet topics.
user fleet
topic readwrite fleet/#
topic read edge/+/state
topic read edge/+/chunks/request
topic write edge/+/chunks
"""

SITES = """
# Site brokers (site-bridge.conf, docs/site-brokers.md): one user per site, the CN of its bridge certificate.
# Topics cross unchanged; centrally a whole site is one user, so each site's block names the topics of the
# devices the registry puts on it (`fleet device add ID --site S`, `fleet device move ID --site S`), and
# nothing of any other device: the central broker checks read access when it delivers, so other devices'
# answers and chunks stay off the site. A site with no devices has no block and can do nothing. Which of a
# site's devices may use which topic is the site broker's own ACL (site-acl).
"""


def pattern_rules() -> list[str]:
    """The per-device rules as mosquitto patterns (here and in deploy/mosquitto/site-acl)."""
    return [f"pattern {access} {topic.format('%u')}" for access, topic in DEVICE_TOPICS]


def site_block(site: str, devices: list[str]) -> str:
    lines = [f"user {check_site(site)}"]
    for device in sorted(devices):
        check_device_id(device)
        lines += [f"topic {access} {topic.format(device)}" for access, topic in DEVICE_TOPICS]
    return "\n".join(lines) + "\n"


def render(sites: dict[str, list[str]], origin: str) -> str:
    """The whole ACL for `sites` (site -> its device ids, Registry.sites()); `origin` says where they came from
    in the header."""
    text = HEADER.format(origin=origin) + DEVICES.format(patterns="\n".join(pattern_rules())) + ROLES + SITES
    return text + "\n".join(site_block(site, devices) for site, devices in sorted(sites.items()) if devices)


def write(path: Path, text: str) -> None:
    """Atomically (temp file, fsync, rename): mosquitto reloading at any moment reads the old ACL or the new."""
    atomic_write_bytes(Path(path), text.encode(), mode=0o644)
