"""The local model store: models/<name>/<version>/ bundles plus models/active.json, changed atomically.

Every change happens under an exclusive flock on models/.lock. New bundles are built in models/.install-*
and renamed into place; active.json is replaced with fsutil's temp-file + fsync + rename. A process killed
at any point leaves either the old state or the new one, plus at most a dot-named temp dir that is never
listed as a version and is swept by the next install."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from . import bundle, paths, signing
from .bundle import Manifest
from .errors import BundleError, StoreError
from .fsutil import atomic_write_json, exclusive_lock, fsync_dir

ACTIVE = "active.json"
_TEMP_PREFIXES = (".install-", ".remove-", ".unpack-")


def _fsync_tree(root: Path) -> None:
    for current, _dirs, names in os.walk(root):
        for name in names:
            fd = os.open(Path(current, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(current))


def _copy_bundle(source: Path, dest: Path) -> None:
    """Copy a bundle directory's regular files (links and special files are refused)."""
    for rel in bundle._walk_files(source):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target, follow_symlinks=False)


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    if not bundle.NAME_RE.match(name) or (version and not bundle.SEMVER_RE.match(version)):
        raise StoreError(f"{ref!r}: not a model reference (NAME or NAME@VERSION)")
    return name, version or None


class Store:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else paths.home()
        self.models = paths.models_dir(self.root)

    # --- reading ------------------------------------------------------------------------------

    def trusted_keys(self) -> dict:
        """The keys trusted to sign bundles (the bundle role)."""
        return signing.trusted_keys(self.root, "bundle")

    def bundle_threshold(self) -> int:
        return signing.threshold(self.root, "bundle")

    def highest_release(self) -> int:
        """The highest release number among the installed bundles (0 when none): the floor of anti-rollback."""
        return max((m.release for m in self.versions()), default=0)

    def _installed(self) -> list[tuple[str, str, Path]]:
        found = []
        if not self.models.is_dir():
            return found
        for name_dir in sorted(self.models.iterdir()):
            if not (bundle.NAME_RE.match(name_dir.name) and name_dir.is_dir()):
                continue
            for version_dir in sorted(name_dir.iterdir()):
                if bundle.SEMVER_RE.match(version_dir.name) and version_dir.is_dir():
                    found.append((name_dir.name, version_dir.name, version_dir))
        return found

    def versions(self, name: str | None = None) -> list[Manifest]:
        """Installed bundles (unverified manifests), sorted by name then release."""
        result = []
        for model_name, _version, path in self._installed():
            if name is None or model_name == name:
                try:
                    result.append(bundle.read_manifest(path))
                except BundleError:
                    continue  # verify_all() reports it
        return sorted(result, key=lambda m: (m.name, m.release, m.version))

    def path(self, name: str, version: str) -> Path:
        _split_ref(f"{name}@{version}")  # names and versions never escape models/
        path = self.models / name / version
        if not path.is_dir():
            raise StoreError(f"{name}@{version}: not installed")
        return path

    def _read_state(self) -> dict | None:
        try:
            state = json.loads((self.models / ACTIVE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise StoreError(f"{self.models / ACTIVE}: unreadable ({error})") from None
        if not (isinstance(state, dict) and all(isinstance(state.get(k), str) for k in ("name", "version"))):
            raise StoreError(f"{self.models / ACTIVE}: malformed")
        return state

    def active(self) -> tuple[str, str] | None:
        state = self._read_state()
        return (state["name"], state["version"]) if state else None

    def previous(self) -> tuple[str, str] | None:
        state = self._read_state()
        previous = state.get("previous") if state else None
        return (previous["name"], previous["version"]) if previous else None

    def active_path(self) -> Path:
        current = self.active()
        if current is None:
            raise StoreError("no active model; install one with `edge-runtime models install PATH --activate`")
        return self.path(*current)

    def latest(self, name: str) -> Manifest:
        candidates = self.versions(name)
        if not candidates:
            raise StoreError(f"{name}: not installed")
        return candidates[-1]

    def resolve(self, ref: str | Path | None = None, allow_unsigned: bool = False) -> Path:
        """A bundle directory for: None (the active model), a path to a bundle dir or .erb archive,
        NAME (the active version of NAME, else its latest release) or NAME@VERSION. Not verified, except an
        archive, which is verified as it is unpacked (so only verified bundles land in the cache)."""
        if ref is None:
            return self.active_path()
        text = str(ref)
        if not (isinstance(ref, Path) or "/" in text or text.endswith(bundle.ARCHIVE_SUFFIX)):
            installed = self._resolve_name(text)
            if installed is not None:
                return installed
            if not Path(text).exists():
                raise StoreError(f"{text}: no installed model or bundle path by that name")
        path = Path(text)
        if path.is_dir():
            return path
        if path.is_file():
            return self._unpacked(path, allow_unsigned)
        raise StoreError(f"{text}: no such bundle directory or archive")

    def _resolve_name(self, text: str) -> Path | None:
        name, _, version = text.partition("@")
        if not bundle.NAME_RE.match(name):
            return None
        if version:
            return self.path(name, version)
        if not self.versions(name):
            return None
        current = self.active()
        return self.path(*current) if current and current[0] == name else self.latest(name).path

    def _unpacked(self, archive: Path, allow_unsigned: bool = False) -> Path:
        """Archives are verified and unpacked once into cache/bundles/<sha256 prefix>/ (safe to delete);
        a refused archive leaves nothing there."""
        digest = bundle.sha256_file(archive)[:24]
        cache = paths.cache_dir(self.root) / "bundles"
        target = cache / digest
        if target.is_dir():
            return target
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
        try:
            bundle.unpack(
                archive,
                tmp / "b",
                self.trusted_keys(),
                allow_unsigned=allow_unsigned,
                threshold=self.bundle_threshold(),
            )
            os.rename(tmp / "b", target)
        except OSError:
            if not target.is_dir():  # another process may have won the race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # --- verification -------------------------------------------------------------------------

    def _verify_installed(self, name: str, version: str, allow_unsigned: bool) -> Manifest:
        path = self.path(name, version)
        try:
            manifest = bundle.verify(
                path, self.trusted_keys(), allow_unsigned=allow_unsigned, threshold=self.bundle_threshold()
            )
        except BundleError as error:
            raise BundleError(f"{name}@{version}: {error}") from None
        if (manifest.name, manifest.version) != (name, version):
            raise BundleError(f"{name}@{version}: installed under the wrong name (manifest says {manifest.ref})")
        return manifest

    def verify(self, ref: str | Path | None = None, allow_unsigned: bool = False) -> Manifest:
        """Verify what `ref` names (see resolve); installed bundles must also sit under their own name."""
        path = self.resolve(ref, allow_unsigned)
        if path.parent.parent == self.models:
            return self._verify_installed(path.parent.name, path.name, allow_unsigned)
        return bundle.verify(
            path, self.trusted_keys(), allow_unsigned=allow_unsigned, threshold=self.bundle_threshold()
        )

    def verify_all(self, allow_unsigned: bool = False) -> list[tuple[str, str, bool, str]]:
        report = []
        for name, version, _path in self._installed():
            try:
                self._verify_installed(name, version, allow_unsigned)
                report.append((name, version, True, ""))
            except BundleError as error:
                report.append((name, version, False, str(error).removeprefix(f"{name}@{version}: ")))
        try:
            current = self.active()
        except StoreError as error:
            return report + [("", "", False, str(error))]
        if current and not (self.models / current[0] / current[1]).is_dir():
            report.append((*current, False, "the active model is not installed"))
        return report

    # --- changing -----------------------------------------------------------------------------

    def _locked(self):
        return exclusive_lock(self.models)

    def _sweep_temp_dirs(self) -> None:
        """Left by a killed process; safe to delete because every writer holds the lock."""
        for entry in self.models.iterdir():
            if entry.name.startswith(_TEMP_PREFIXES) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    def install(self, source: Path, allow_unsigned: bool = False) -> Manifest:
        """Copy or unpack into models/.install-*, verify there, fsync, rename to models/<name>/<version>."""
        source = Path(source)
        if not source.exists():
            raise StoreError(f"{source}: no such bundle directory or archive")
        with self._locked():
            self._sweep_temp_dirs()
            tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=self.models))
            try:
                return self._install_from(source, tmp / "bundle", allow_unsigned)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def install_new_version(self, source: Path, manifest: dict, private_key=None) -> Manifest:
        """Write a new version of the bundle in `source` (`bundle.write_new_version`) and install it; it is
        not activated."""
        with tempfile.TemporaryDirectory(prefix="edge-runtime-new-version-") as scratch:
            return self.install(bundle.write_new_version(source, manifest, Path(scratch) / "bundle", private_key))

    def _install_from(self, source: Path, staged: Path, allow_unsigned: bool) -> Manifest:
        trusted, threshold = self.trusted_keys(), self.bundle_threshold()
        if source.is_dir():
            staged.mkdir()
            _copy_bundle(source, staged)
            manifest = bundle.verify(staged, trusted, allow_unsigned=allow_unsigned, threshold=threshold)
        else:  # verified while it is unpacked: nothing unverified is written beyond the small metadata
            manifest = bundle.unpack(source, staged, trusted, allow_unsigned=allow_unsigned, threshold=threshold)
        if manifest.name == ACTIVE:
            raise StoreError(f"{manifest.name}: reserved name")
        target = self.models / manifest.name / manifest.version
        if target.exists():
            return self._existing(target, staged, manifest)
        for other in self.versions(manifest.name):
            if other.release == manifest.release:
                raise StoreError(f"{manifest.ref}: release {manifest.release} is already used by {other.ref}")
        for rel in manifest.files:
            os.chmod(staged / rel, 0o444)  # installed bundles are immutable
        _fsync_tree(staged)
        target.parent.mkdir(exist_ok=True)
        fsync_dir(self.models)
        self._commit_install(staged, target)
        return Manifest(manifest.raw, target, manifest.signers)

    def _commit_install(self, staged: Path, target: Path) -> None:
        """The one step that makes a new version visible: a crash before it leaves only a staging dir behind."""
        os.rename(staged, target)
        fsync_dir(target.parent)

    def _existing(self, target: Path, staged: Path, manifest: Manifest) -> Manifest:
        same = (target / bundle.MANIFEST).read_bytes() == (staged / bundle.MANIFEST).read_bytes()
        if not same:
            raise StoreError(f"{manifest.ref} is already installed with different contents; bump the version")
        try:
            bundle.check_files(target, manifest)
        except BundleError:
            # The installed copy was damaged: swap in the fresh, verified one.
            _fsync_tree(staged)
            trash = Path(tempfile.mkdtemp(prefix=".remove-", dir=self.models))
            os.rename(target, trash / "old")
            os.rename(staged, target)
            fsync_dir(target.parent)
            shutil.rmtree(trash, ignore_errors=True)
        return Manifest(manifest.raw, target, manifest.signers)

    def _write_state(self, name: str, version: str, previous: tuple[str, str] | None) -> None:
        state = {
            "name": name,
            "version": version,
            "previous": {"name": previous[0], "version": previous[1]} if previous else None,
        }
        atomic_write_json(self.models / ACTIVE, state)

    def activate(self, name: str, version: str | None = None, allow_unsigned: bool = False) -> Manifest:
        """Re-verify, then point active.json at NAME@VERSION (latest release when VERSION is None),
        keeping the old active model as `previous`."""
        with self._locked():
            version = version or self.latest(name).version
            manifest = self._verify_installed(name, version, allow_unsigned)
            current = self.active()
            if current != (name, version):
                self._write_state(name, version, current)
            return manifest

    def rollback(self, allow_unsigned: bool = False) -> Manifest:
        """Swap the active and previous models."""
        with self._locked():
            current, previous = self.active(), self.previous()
            if previous is None:
                raise StoreError("nothing to roll back to (no previous model)")
            manifest = self._verify_installed(*previous, allow_unsigned)
            self._write_state(*previous, current)
            return manifest

    def remove(self, name: str, version: str) -> None:
        with self._locked():
            path = self.path(name, version)
            if self.active() == (name, version):
                raise StoreError(f"{name}@{version} is the active model; activate another one first")
            if self.previous() == (name, version):
                raise StoreError(f"{name}@{version} is the rollback target; activate another one first")
            # Rename first so the version disappears atomically, then delete at leisure.
            trash = Path(tempfile.mkdtemp(prefix=".remove-", dir=self.models))
            os.rename(path, trash / "old")
            fsync_dir(path.parent)
            shutil.rmtree(trash, ignore_errors=True)
            try:
                path.parent.rmdir()
            except OSError:
                pass  # other versions remain
