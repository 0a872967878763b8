"""The device registry: which devices the fleet manager knows and which group each one is in.

The manager decides group membership from here and never from a device's own report: a device's state
report may say any group, so it only ever disqualifies (a device whose report disagrees with its
enrollment is flagged and left out of decisions), it never admits. Desired states go only to enrolled
devices, on their own topic; chunks only to enrolled devices of a group the release is for.

Stored in SQLite (`<fleet dir>/registry.sqlite`): every change is one transaction, so a crash leaves the
old or the new registry, never half of one. A registry that is there but cannot be read (not a database,
a wrong schema, a row that does not check out) raises `RegistryError` on every use, and nothing is
published or served on its account: an unreadable allowlist must not read as "no restrictions". A
registry that does not exist yet is empty, which allows nothing.
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
SCHEMA_VERSION = 1
# The broker's ACL gives these certificate CNs roles (deploy/mosquitto/acl): a device named so would get them.
RESERVED_IDS = ("worker", "fleet")
SOURCES = ("cli", "cert")  # how a device was enrolled: by id, or from its client certificate's subject CN


class RegistryError(FleetError):
    """The registry cannot be read or written, or a change to it is refused (unknown device, bad id)."""


@dataclass(frozen=True)
class Enrollment:
    device: str
    group: str
    source: str
    enrolled_at: float

    def to_dict(self) -> dict:
        return asdict(self)


def check_device_id(device: str) -> str:
    """A device id as the rest of the system takes it (escalation.check_device_id: it is an MQTT topic level
    and the certificate CN), and not a reserved role name."""
    if not isinstance(device, str) or not device or any(ch in device for ch in "/+#\0") or len(device) > 128:
        raise RegistryError(f"device id {device!r} must be 1-128 characters without / + # or NUL")
    if device != device.strip() or any(ch < " " for ch in device):
        raise RegistryError(f"device id {device!r} has surrounding white space or control characters")
    if device in RESERVED_IDS:
        raise RegistryError(f"device id {device!r} is reserved (the broker ACL gives it a role)")
    return device


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
            if version != SCHEMA_VERSION:
                raise self._unreadable(f"schema version {version}, expected {SCHEMA_VERSION}")
            rows = connection.execute(
                f"SELECT device, grp, source, enrolled_at FROM devices {where} ORDER BY device", args
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
        device, group, source, enrolled_at = row
        try:
            check_device_id(device)
            _check_group(group)
        except RegistryError as error:
            raise self._unreadable(f"row {device!r}: {error}") from None
        if source not in SOURCES or not isinstance(enrolled_at, (int, float)):
            raise self._unreadable(f"row {device!r}: source {source!r}, enrolled_at {enrolled_at!r}")
        return Enrollment(device, group, source, float(enrolled_at))

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

    # --- changing ---------------------------------------------------------------------------------
    def _write(self):
        """A connection for one change; creates the registry (and the fleet dir) on first use. A file that
        exists but is not this registry fails here instead of being overwritten."""
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
                    "enrolled_at REAL NOT NULL)"
                )
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute("COMMIT")
                os.chmod(self.path, 0o644)
        except sqlite3.Error as error:
            if connection is not None:
                connection.close()
            raise self._unreadable(error) from None
        return connection

    def _change(self, statement: str, args: tuple, check) -> None:
        """Run `check(current group or None)` and the statement in one IMMEDIATE transaction: two CLI
        processes enrolling the same device cannot both pass the check."""
        connection = self._write()
        try:
            connection.execute("BEGIN IMMEDIATE")
            row = connection.execute("SELECT grp FROM devices WHERE device = ?", (args[-1],)).fetchone()
            try:
                check(row[0] if row else None)
            except RegistryError:
                connection.execute("ROLLBACK")
                raise
            connection.execute(statement, args)
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise RegistryError(f"device registry {self.path}: {error}") from None
        finally:
            connection.close()

    def add(self, device: str, group: str, source: str = "cli") -> Enrollment:
        """Enroll a device in a group. Enrolling it again in the same group changes nothing; in another
        group it is refused (`move` says so explicitly)."""
        device, group = check_device_id(device), _check_group(group)
        if source not in SOURCES:
            raise ValueError(f"unknown enrollment source {source!r}")
        now = time.time()

        def check(current):
            if current is not None and current != group:
                raise RegistryError(f"device {device} is enrolled in group {current}; move it with `fleet device move`")

        self._change(
            "INSERT OR IGNORE INTO devices (grp, source, enrolled_at, device) VALUES (?, ?, ?, ?)",
            (group, source, now, device),
            check,
        )
        return next(e for e in self.enrollments() if e.device == device)

    def move(self, device: str, group: str) -> Enrollment:
        device, group = check_device_id(device), _check_group(group)
        self._change("UPDATE devices SET grp = ? WHERE device = ?", (group, device), self._must_exist(device))
        return next(e for e in self.enrollments() if e.device == device)

    def remove(self, device: str) -> None:
        self._change("DELETE FROM devices WHERE device = ?", (device,), self._must_exist(device))

    @staticmethod
    def _must_exist(device: str):
        def check(current):
            if current is None:
                raise RegistryError(f"device {device} is not enrolled")

        return check
