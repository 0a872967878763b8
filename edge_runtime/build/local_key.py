"""The local build key ($EDGE_RUNTIME_HOME/keys/signing/local.key): created on first use and trusted as a
bundle signer only. It is never a fleet signer (signing.trust_key refuses it): a device image cloned after a
build carries this key, and it must not let any clone steer the fleet. `edge-runtime doctor` warns about it."""

from __future__ import annotations

from pathlib import Path

from .. import paths, signing


def local_signing_key(root: Path | None = None):
    root = Path(root) if root else paths.home()
    key_path = signing.local_key_path(root)
    if key_path.is_file():
        key = signing.load_private_key(key_path)
    else:
        key, _ = signing.generate_keypair()
        signing.save_private_key(key_path, key)
    signing.trust_key(root, key.public_key(), "bundle")  # idempotent; re-trusts if the file was removed
    return key
