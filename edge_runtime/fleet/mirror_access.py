"""What a device needs to reach private mirrors (docs/fleet.md#mirrors): the TLS trust for https:// mirrors and
credentials per mirror origin. Both are device-side configuration ([update] in the config), never part of the
signed release record, which is fleet-wide and readable by every device.

    [update]
    mirror_ca_file = "/etc/edge-runtime/mirror-ca.pem"   # trusted besides the system store ('' = system only)
    mirror_credentials = ["https://cdn.example.com:443=/etc/edge-runtime/cdn.cred"]   # ORIGIN=FILE

Certificates are always verified (host name included): by the system trust store, plus the CA file for a
private PKI. A credentials file holds one line: `user:password` (sent as Basic) or a bearer token (RFC 6750
characters, no ':'). Like ssh with a private key, the file is refused when its group or others may access it.
Its header goes to its origin only: not to another mirror, and never after a redirect (mirrors are not
followed anywhere: a 3xx leaves the mirror). The file is read for every download, so a rotated token is used
without a restart; `check()` reads everything once at start-up, so a mistake is a one-line error then.
"""

from __future__ import annotations

import base64
import os
import re
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import FleetError

DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 b64token
MAX_CREDENTIALS_BYTES = 8192


class MirrorAccessError(FleetError):
    """A mirror CA file or credentials entry that cannot be used; the message says which and why."""


def origin(url: str) -> str:
    """scheme://host:port of a URL, lower-cased, with the default port written out; ValueError if it has none."""
    parts = urlsplit(url)
    scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port  # port: ValueError
    if scheme not in DEFAULT_PORTS or not host:
        raise ValueError("must be http:// or https:// with a host")
    host = f"[{host}]" if ":" in host else host
    if not _HOST.fullmatch(host):
        raise ValueError(f"host {host[:80]!r} is not a host name or address")
    return f"{scheme}://{host}:{port or DEFAULT_PORTS[scheme]}"


def _parse_entry(entry: str) -> tuple[str, Path]:
    """'ORIGIN=FILE' -> (normalized origin, file)."""
    where = f"update.mirror_credentials: {entry[:120]!r}"
    base, sep, path = entry.partition("=")
    if not sep or not path.strip():
        raise MirrorAccessError(
            f"{where}: must be ORIGIN=FILE, e.g. https://cdn.example.com=/etc/edge-runtime/cdn.cred"
        )
    parts = urlsplit(base.strip())
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        raise MirrorAccessError(f"{where}: the origin is scheme://host[:port], without a path or credentials")
    try:
        return origin(base.strip()), Path(path.strip())
    except ValueError as error:
        raise MirrorAccessError(f"{where}: origin {error}") from None


def read_credentials(path: Path) -> str:
    """The Authorization header value a credentials file gives; MirrorAccessError with the reason."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise MirrorAccessError(f"credentials file {path}: not a regular file")
            if info.st_mode & 0o077:
                raise MirrorAccessError(
                    f"credentials file {path}: permissions {stat.S_IMODE(info.st_mode):04o} are too open "
                    f"(group or others may access it): chmod 600 {path}"
                )
            data = handle.read(MAX_CREDENTIALS_BYTES + 1)
    except OSError as error:
        raise MirrorAccessError(f"credentials file {path}: cannot read ({error.strerror or error})") from None
    try:
        lines = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        lines = []
    if len(data) > MAX_CREDENTIALS_BYTES or len(lines) != 1 or not lines[0].isprintable():
        raise MirrorAccessError(f"credentials file {path}: must hold one line, user:password or a bearer token")
    secret = lines[0]
    if ":" in secret:
        user = secret.partition(":")[0]
        if not user:
            raise MirrorAccessError(f"credentials file {path}: user:password with an empty user")
        return "Basic " + base64.b64encode(secret.encode("utf-8")).decode("ascii")
    if not _TOKEN.fullmatch(secret):
        raise MirrorAccessError(
            f"credentials file {path}: a bearer token is letters, digits and -._~+/ (user:password has a ':')"
        )
    return f"Bearer {secret}"


@dataclass(frozen=True)
class MirrorAccess:
    ca_file: str | None = None  # trusted for https:// mirrors besides the system store
    credentials: Mapping[str, Path] = field(default_factory=dict)  # origin -> credentials file

    @classmethod
    def from_config(cls, config: Mapping) -> MirrorAccess:
        """From a config's [update] mirror_ca_file and mirror_credentials (not read yet: see check)."""
        update = config["update"]
        credentials: dict[str, Path] = {}
        for entry in update["mirror_credentials"]:
            key, path = _parse_entry(entry)
            if key in credentials:
                raise MirrorAccessError(f"update.mirror_credentials: {key} is named twice")
            credentials[key] = path
        return cls(update["mirror_ca_file"] or None, credentials)

    def context(self) -> ssl.SSLContext:
        """Certificate and host name verification: the system trust store, plus ca_file when set."""
        context = ssl.create_default_context()
        if self.ca_file:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as error:
                reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or error
                raise MirrorAccessError(
                    f"update.mirror_ca_file: {self.ca_file}: not a PEM CA file ({reason})"
                ) from None
        return context

    def authorization(self, url: str) -> str | None:
        """The Authorization header for the origin of `url`, or None when none is configured for it."""
        try:
            path = self.credentials.get(origin(url))
        except ValueError:
            return None
        return read_credentials(path) if path is not None else None

    def check(self) -> None:
        """Load the CA file and read every credentials file now: the first problem, as MirrorAccessError."""
        self.context()
        for path in self.credentials.values():
            try:
                read_credentials(path)
            except MirrorAccessError as error:
                raise MirrorAccessError(f"update.mirror_credentials: {error}") from None
