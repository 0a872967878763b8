"""ed25519 keys, detached signatures and the keys a device trusts, by role.

Two roles, each with its own k-of-n threshold (keys/roles.json, 1 when absent):
  bundle   keys/trusted/<key_id>.pub        sign bundles (manifest.json); every key trusted before roles existed
  fleet    keys/trusted-fleet/<key_id>.pub  sign release records and desired states: they decide what runs
The device's own build key (keys/signing/local.key, `build default`) is never a fleet signer: a device image
cloned after a build carries it, so it must not count towards fleet control on every clone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import paths
from .errors import BundleError
from .fsutil import atomic_write_bytes, atomic_write_json

ALGORITHM = "ed25519"
PUBLIC_SUFFIX = ".pub"
ROLES = ("bundle", "fleet")
_ROLE_DIRS = {"bundle": "trusted", "fleet": "trusted-fleet"}
THRESHOLDS_FILE = "roles.json"
LOCAL_KEY = "local.key"


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    private_key = Ed25519PrivateKey.generate()
    return private_key, private_key.public_key()


def public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of sha256 over the raw 32-byte public key."""
    return hashlib.sha256(public_key_bytes(public_key)).hexdigest()[:16]


def public_key_to_text(public_key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_key_bytes(public_key)).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BundleError("not a base64 ed25519 public key") from None
    if len(raw) != 32:
        raise BundleError(f"not an ed25519 public key: expected 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def save_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """PKCS#8 PEM, unencrypted, mode 0600 from the first byte on (mkstemp), then renamed into place."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    atomic_write_bytes(Path(path), pem, mode=0o600)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BundleError(f"{path}: cannot read private key ({error.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise BundleError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: not an ed25519 private key")
    return key


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise BundleError(f"unknown key role {role!r} (one of {', '.join(ROLES)})")
    return role


def trusted_dir(root: Path | None, role: str = "bundle") -> Path:
    return paths.keys_dir(root) / _ROLE_DIRS[_check_role(role)]


def signing_keys_dir(root: Path | None) -> Path:
    """Private keys kept on this machine (the local build key; a fleet manager's keys if it keeps them here)."""
    return paths.keys_dir(root) / "signing"


def local_key_path(root: Path | None) -> Path:
    return signing_keys_dir(root) / LOCAL_KEY


def local_key_id(root: Path | None) -> str | None:
    """The key id of this device's local build key, None when there is none. An unreadable key file is an
    error: the fleet role cannot be checked without knowing which key to exclude."""
    path = local_key_path(root)
    if not path.exists():
        return None
    return key_id(load_private_key(path).public_key())


def trust_key(root: Path | None, public_key: Ed25519PublicKey, role: str = "bundle") -> str:
    kid = key_id(public_key)
    if role == "fleet" and kid == local_key_id(root):
        raise BundleError(
            f"key {kid} is this device's local build key ({local_key_path(root)}); it is never trusted for the "
            "fleet role (a cloned device image carries it)"
        )
    text = (public_key_to_text(public_key) + "\n").encode()
    atomic_write_bytes(trusted_dir(root, role) / f"{kid}{PUBLIC_SUFFIX}", text)
    return kid


def trusted_keys(root: Path | None = None, role: str = "bundle") -> dict[str, Ed25519PublicKey]:
    """Key ids are recomputed from the key material, so a renamed file cannot impersonate another id.
    The fleet role never includes the device's local build key, even if its file was copied there."""
    directory = trusted_dir(root, role)
    keys: dict[str, Ed25519PublicKey] = {}
    if not directory.is_dir():
        return keys
    for file in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        try:
            public_key = public_key_from_text(file.read_text(encoding="ascii"))
        except (BundleError, UnicodeDecodeError) as error:
            raise BundleError(f"trusted key {file}: {error}") from None
        keys[key_id(public_key)] = public_key
    if role == "fleet":
        keys.pop(local_key_id(root), None)
    return keys


def _thresholds_path(root: Path | None) -> Path:
    return paths.keys_dir(root) / THRESHOLDS_FILE


def _read_thresholds(root: Path | None) -> dict:
    path = _thresholds_path(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise BundleError(f"{path}: unreadable ({error}); fix or remove it") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: malformed (expected {{role: threshold}})")
    return data


def threshold(root: Path | None, role: str) -> int:
    """How many trusted keys of `role` must sign (k of n); 1 unless set. Fails closed on a damaged file."""
    value = _read_thresholds(root).get(_check_role(role), 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BundleError(f"{_thresholds_path(root)}: threshold for {role} must be a positive integer")
    return value


def set_threshold(root: Path | None, role: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise BundleError("a threshold must be at least 1")
    atomic_write_json(_thresholds_path(root), {**_read_thresholds(root), _check_role(role): value})


def sign(private_key: Ed25519PrivateKey, data: bytes) -> dict:
    return {
        "key_id": key_id(private_key.public_key()),
        "algorithm": ALGORITHM,
        "signature": base64.b64encode(private_key.sign(data)).decode("ascii"),
    }


def _check_one(data: bytes, entry, trusted: dict[str, Ed25519PublicKey]) -> tuple[str | None, str]:
    """(key_id if the entry verifies, else None; why not)."""
    if not isinstance(entry, dict):
        return None, "malformed signature entry"
    kid, algorithm = entry.get("key_id"), entry.get("algorithm")
    if algorithm != ALGORITHM:
        return None, f"unsupported algorithm {algorithm!r}"
    if kid not in trusted:
        return None, f"signed by untrusted key {kid}"
    try:
        signature = base64.b64decode(str(entry.get("signature", "")), validate=True)
        trusted[kid].verify(signature, data)
    except (binascii.Error, ValueError, InvalidSignature):
        return None, f"bad signature from key {kid}"
    return kid, ""


def verify_signatures(
    data: bytes, signatures, trusted: dict[str, Ed25519PublicKey], threshold: int = 1, role: str = "bundle"
) -> list[str]:
    """Key ids of the trusted keys (of `role`) whose signature over `data` verifies; BundleError below
    `threshold`."""
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    if not isinstance(signatures, list) or not signatures:
        raise BundleError("not signed")
    good: list[str] = []
    problems: list[str] = []
    for entry in signatures:
        kid, problem = _check_one(data, entry, trusted)
        if kid and kid not in good:  # one key counts once towards the threshold
            good.append(kid)
        elif problem:
            problems.append(problem)
    if len(good) >= threshold:
        return good
    if not good:
        hint = f"no keys are trusted for the {role} role; add one with `edge-runtime keys trust --role {role}`"
        detail = "; ".join(problems) if trusted else hint
        raise BundleError(f"signature does not verify with any trusted key ({detail})")
    raise BundleError(f"only {len(good)} of the {threshold} required trusted signatures verify")
