"""The device registry: which devices the fleet manager knows, which group each one is in and, for a device
behind a site broker, which site (the central broker's user for that site's bridge, `fleet acl`).

The manager decides group membership from here and never from a device's own report: a device's state
report may say any group, so it only ever disqualifies (a device whose report disagrees with its
enrollment is flagged and left out of decisions), it never admits. Desired states go only to enrolled
devices, on their own topic; chunks only to enrolled devices of a group the release is for.

Stored in SQLite (`<fleet dir>/registry.sqlite`): every change is one transaction, so a crash leaves the
old or the new registry, never half of one. A registry that is there but cannot be read (not a database,
a wrong schema, a row that does not check out) raises `RegistryError` on every use, and nothing is
published or served on its account: an unreadable allowlist must not read as "no restrictions". A
registry that does not exist yet is empty, which allows nothing.

Schema 2 added the optional site column. A schema-1 registry reads as devices with no site, and its first
change adds the column and the new version in one transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import FleetError, ReleaseError
from .release import check_group

FILE = "registry.sqlite"
SCHEMA_VERSION = 2  # 2: devices.site
READABLE_VERSIONS = (1, SCHEMA_VERSION)  # 1: before sites; read as "no site", migrated by the next change
# The broker's ACL gives these certificate CNs roles (deploy/mosquitto/acl): a device named so would get them.
RESERVED_IDS = ("worker", "fleet")
RESERVED_PREFIX = "site-"  # site brokers' bridge identities (deploy/mosquitto/site-bridge.conf)
UNCHANGED = object()  # `move`: leave the site as it is
SOURCES = ("cli", "cert")  # how a device was enrolled: by id, or from its client certificate's subject CN


class RegistryError(FleetError):
    """The registry cannot be read or written, or a change to it is refused (unknown device, bad id)."""


@dataclass(frozen=True)
class Enrollment:
    device: str
    group: str
    source: str
    enrolled_at: float
    site: str | None = None  # the site broker it connects through; None: the central broker directly

    def to_dict(self) -> dict:
        return asdict(self)


def _check_name(kind: str, name: str) -> str:
    """An MQTT topic level and a certificate CN (escalation.check_device_id): what ids and sites both are."""
    if not isinstance(name, str) or not name or any(ch in name for ch in "/+#\0") or len(name) > 128:
        raise RegistryError(f"{kind} {name!r} must be 1-128 characters without / + # or NUL")
    if name != name.strip() or any(ch < " " for ch in name):
        raise RegistryError(f"{kind} {name!r} has surrounding white space or control characters")
    return name


def check_device_id(device: str) -> str:
    """A device id as the rest of the system takes it, and not a reserved role name."""
    _check_name("device id", device)
    if device in RESERVED_IDS or device.startswith(RESERVED_PREFIX):
        raise RegistryError(f"device id {device!r} is reserved (the broker ACL gives it a role)")
    return device


def check_site(site: str) -> str:
    """A site name: its bridge certificate's CN, so its user on the central broker; checked like a device id,
    and it must be `site-<name>` (the prefix no device id may have)."""
    _check_name("site", site)
    if not site.startswith(RESERVED_PREFIX) or site == RESERVED_PREFIX:
        raise RegistryError(f"site {site!r} must be {RESERVED_PREFIX}<name> (its bridge certificate's CN)")
    return site


def _check_group(group: str) -> str:
    try:
        return check_group(group)
    except ReleaseError as error:
        raise RegistryError(str(error)) from None


def device_id_from_certificate(pem: bytes, source: str = "certificate") -> str:
    """The subject CN of a PEM client certificate: the broker's username for it (use_identity_as_username),
    so the id its ACL rules are written for."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise RegistryError(f"{source}: not a PEM certificate ({error})") from None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise RegistryError(f"{source}: the subject has {len(names)} common names (CN), expected exactly one")
    value = names[0].value
    return check_device_id(value if isinstance(value, str) else value.decode("utf-8", "replace"))


class Registry:
    def __init__(self, path: Path):
        self.path = Path(path)

    # --- reading ----------------------------------------------------------------------------------
    def _unreadable(self, problem) -> RegistryError:
        return RegistryError(
            f"device registry {self.path} is unreadable ({problem}): nothing is published or served until it is "
            "repaired (restore it from a backup, or remove it and enroll the devices again)"
        )

    def _read(self, where: str = "", args: tuple = ()) -> list[Enrollment]:
        if not self.path.exists():
            return []
        try:
            # read-only: a reader never creates, migrates or "repairs" the file
            connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        except sqlite3.Error as error:
            raise self._unreadable(error) from None
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in READABLE_VERSIONS:
                raise self._unreadable(f"schema version {version}, expected {SCHEMA_VERSION}")
            site = "site" if version >= 2 else "NULL"
            rows = connection.execute(
                f"SELECT device, grp, source, enrolled_at, {site} FROM devices {where} ORDER BY device", args
            ).fetchall()
        except sqlite3.Error as error:
            raise self._unreadable(error) from None
        finally:
            connection.close()
        return [self._checked(row) for row in rows]

    def enrollments(self) -> list[Enrollment]:
        """Every enrolled device, by id; [] when no registry exists yet; RegistryError when it is unreadable."""
        return self._read()

    def _checked(self, row) -> Enrollment:
        """A row as stored, checked like input: a hand-edited registry must not smuggle in a bad id or group."""
        device, group, source, enrolled_at, site = row
        try:
            check_device_id(device)
            _check_group(group)
            if site is not None:
                check_site(site)
        except RegistryError as error:
            raise self._unreadable(f"row {device!r}: {error}") from None
        if source not in SOURCES or not isinstance(enrolled_at, (int, float)):
            raise self._unreadable(f"row {device!r}: source {source!r}, enrolled_at {enrolled_at!r}")
        return Enrollment(device, group, source, float(enrolled_at), site)

    def groups(self) -> dict[str, str]:
        """device -> group, for every enrolled device."""
        return {e.device: e.group for e in self.enrollments()}

    def group_of(self, device: str) -> str | None:
        """The device's group, or None if it is not enrolled (one row: `fleet serve` asks per chunk request,
        and reads the file each time, so an enrollment or removal takes effect without a restart)."""
        found = self._read("WHERE device = ?", (device,))
        return found[0].group if found else None

    def members(self, group: str) -> list[str]:
        return sorted(d for d, g in self.groups().items() if g == group)

    def sites(self) -> dict[str, list[str]]:
        """site -> its devices (sorted), for every site that has at least one; devices without a site are not in it."""
        found: dict[str, list[str]] = {}
        for enrollment in self.enrollments():
            if enrollment.site is not None:
                found.setdefault(enrollment.site, []).append(enrollment.device)
        return dict(sorted(found.items()))

    # --- changing ---------------------------------------------------------------------------------
    def _write(self):
        """A connection for one change; creates the registry (and the fleet dir) on first use, and migrates a
        schema-1 registry. A file that exists but is not this registry fails here instead of being overwritten."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        if not created:
            self.enrollments()  # fails closed before any change to an unreadable registry
        connection = None
        try:
            connection = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            connection.execute("PRAGMA synchronous=FULL")  # an enrollment that was confirmed stays
            if created:  # table and version in one transaction: a crash leaves both or neither
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(
                    "CREATE TABLE devices (device TEXT PRIMARY KEY, grp TEXT NOT NULL, source TEXT NOT NULL, "
                    "enrolled_at REAL NOT NULL, site TEXT)"
                )
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute("COMMIT")
                os.chmod(self.path, 0o644)
            else:
                self._migrate(connection)
        except sqlite3.Error as error:
            if connection is not None:
                connection.close()
            raise self._unreadable(error) from None
        return connection

    @staticmethod
    def _migrate(connection) -> None:
        """Schema 1 -> 2 (the site column), column and version in one transaction; a no-op once done."""
        connection.execute("BEGIN IMMEDIATE")
        if connection.execute("PRAGMA user_version").fetchone()[0] == 1:
            connection.execute("ALTER TABLE devices ADD COLUMN site TEXT")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")

    def _change(self, statement: str, args: tuple, check) -> None:
        """Run `check(current (group, site) or None)` and the statement in one IMMEDIATE transaction: two CLI
        processes enrolling the same device cannot both pass the check."""
        connection = self._write()
        try:
            connection.execute("BEGIN IMMEDIATE")
            row = connection.execute("SELECT grp, site FROM devices WHERE device = ?", (args[-1],)).fetchone()
            try:
                check(row)
            except RegistryError:
                connection.execute("ROLLBACK")
                raise
            connection.execute(statement, args)
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise RegistryError(f"device registry {self.path}: {error}") from None
        finally:
            connection.close()

    def add(self, device: str, group: str, source: str = "cli", site: str | None = None) -> Enrollment:
        """Enroll a device in a group, and on a site if it connects through one. Enrolling it again in the same
        group and site changes nothing; anything else is refused (`move` says so explicitly)."""
        device, group = check_device_id(device), _check_group(group)
        site = None if site is None else check_site(site)
        if source not in SOURCES:
            raise ValueError(f"unknown enrollment source {source!r}")
        now = time.time()

        def check(current):
            if current is not None and current[0] != group:
                raise RegistryError(
                    f"device {device} is enrolled in group {current[0]}; move it with `fleet device move`"
                )
            if current is not None and current[1] != site:
                where = f"on site {current[1]}" if current[1] else "with no site"
                raise RegistryError(f"device {device} is enrolled {where}; move it with `fleet device move --site`")

        self._change(
            "INSERT OR IGNORE INTO devices (grp, source, enrolled_at, site, device) VALUES (?, ?, ?, ?, ?)",
            (group, source, now, site, device),
            check,
        )
        return self._one(device)

    def move(self, device: str, group: str | None = None, site=UNCHANGED) -> Enrollment:
        """Change the device's group, its site (None: no site, it connects to the central broker), or both, in
        one transaction."""
        device = check_device_id(device)
        changes: dict[str, str | None] = {}
        if group is not None:
            changes["grp"] = _check_group(group)
        if site is not UNCHANGED:
            changes["site"] = None if site is None else check_site(site)
        if not changes:
            raise RegistryError("nothing to change: give a group or a site")
        assignments = ", ".join(f"{column} = ?" for column in changes)
        self._change(
            f"UPDATE devices SET {assignments} WHERE device = ?", (*changes.values(), device), self._must_exist(device)
        )
        return self._one(device)

    def _one(self, device: str) -> Enrollment:
        return self._read("WHERE device = ?", (device,))[0]

    def remove(self, device: str) -> None:
        self._change("DELETE FROM devices WHERE device = ?", (device,), self._must_exist(device))

    @staticmethod
    def _must_exist(device: str):
        def check(current):
            if current is None:
                raise RegistryError(f"device {device} is not enrolled")

        return check
