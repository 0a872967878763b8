"""The local build key ($EDGE_RUNTIME_HOME/keys/signing/local.key): created and trusted on first use."""

from __future__ import annotations

from pathlib import Path

from .. import paths, signing


def local_signing_key(root: Path | None = None):
    root = Path(root) if root else paths.home()
    key_path = paths.keys_dir(root) / "signing" / "local.key"
    if key_path.is_file():
        key = signing.load_private_key(key_path)
    else:
        key, _ = signing.generate_keypair()
        signing.save_private_key(key_path, key)
    signing.trust_key(root, key.public_key())  # idempotent; re-trusts if the file was removed
    return key
