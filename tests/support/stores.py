"""Stores for tests: a real store directory that trusts the build key, with a bundle installed and active."""

from __future__ import annotations

from pathlib import Path

from edge_runtime import signing
from edge_runtime.store import Store


def store_with(root: Path, bundle_dir: Path, key_path: Path) -> Path:
    """ROOT as EDGE_RUNTIME_HOME: trusts KEY_PATH's public key, BUNDLE_DIR installed and active."""
    signing.trust_key(root, signing.load_private_key(key_path).public_key())
    store = Store(root)
    manifest = store.install(bundle_dir)
    store.activate(manifest.name, manifest.version)
    return root
