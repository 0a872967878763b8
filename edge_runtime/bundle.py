"""Bundle format v1: a directory with model files, manifest.json (hashes of every file) and signature.json
(detached ed25519 signatures over the exact bytes of manifest.json); `.erb` archives are plain tar files.
The format is specified in docs/bundle-format.md."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from . import signing
from .errors import BundleError
from .fsutil import atomic_write_bytes, fsync_dir

FORMAT = "edge-runtime-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
ARCHIVE_SUFFIX = ".erb"
TASKS = ("text-classification", "feature-extraction", "token-classification")
LABELLED_TASKS = ("text-classification", "token-classification")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

# unpack() limits: generous for INT8 models, small enough to stop an archive filling the disk.
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_MEMBERS = 1000
_CHUNK = 1 << 20


class Manifest:
    """Read-only view of manifest.json. `path` is the bundle directory, `signers` the verified key ids."""

    def __init__(self, raw: dict, path: Path | None = None, signers: tuple[str, ...] = ()):
        self.raw = raw
        self.path = Path(path) if path is not None else None
        self.signers = tuple(signers)

    name = property(lambda self: self.raw["name"])
    version = property(lambda self: self.raw["version"])
    release = property(lambda self: self.raw["release"])
    task = property(lambda self: self.raw["task"])
    created = property(lambda self: self.raw["created"])
    files = property(lambda self: self.raw["files"])
    model = property(lambda self: self.raw["model"])
    model_file = property(lambda self: self.raw["model"]["file"])
    preprocess = property(lambda self: self.raw.get("preprocess", {}))
    postprocess = property(lambda self: self.raw.get("postprocess", {}))
    routing = property(lambda self: self.raw.get("routing", {}))
    metrics = property(lambda self: self.raw.get("metrics", {}))
    min_runtime = property(lambda self: self.raw.get("min_runtime"))
    tokenizer_file = property(lambda self: self.preprocess.get("tokenizer"))
    labels_file = property(lambda self: self.postprocess.get("labels"))
    ref = property(lambda self: f"{self.name}@{self.version}")

    def labels(self) -> list[str] | None:
        if not self.labels_file or self.path is None:
            return None
        return json.loads((self.path / self.labels_file).read_text(encoding="utf-8"))

    def __repr__(self) -> str:
        return f"Manifest({self.ref}, release={self.release}, path={self.path})"


def canonical_json(obj) -> bytes:
    """Sorted keys, 2-space indent, UTF-8 (not ASCII-escaped), trailing newline, no NaN."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_relative_path(name: str) -> str:
    """A member path must be relative, POSIX, without '..', and not one of the two metadata files."""
    parts = PurePosixPath(name).parts
    if (
        not name
        or "\\" in name
        or name.startswith("/")
        or "\x00" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise BundleError(f"{name!r}: not a safe relative path")
    if parts in ((MANIFEST,), (SIGNATURE,)):
        raise BundleError(f"{name}: reserved name cannot be listed in files")
    return name


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise BundleError(f"{MANIFEST}: {reason}")


def validate_manifest(raw) -> None:
    _require(isinstance(raw, dict), "not a JSON object")
    _require(raw.get("format") == FORMAT, f"unsupported format {raw.get('format')!r} (expected {FORMAT!r})")
    name, version, release = raw.get("name"), raw.get("version"), raw.get("release")
    _require(isinstance(name, str) and bool(NAME_RE.match(name)), f"invalid name {name!r}")
    _require(isinstance(version, str) and bool(SEMVER_RE.match(version)), f"version {version!r} is not semver")
    _require(
        isinstance(release, int) and not isinstance(release, bool) and release >= 0,
        f"release {release!r} is not a non-negative integer",
    )
    _require(raw.get("task") in TASKS, f"task {raw.get('task')!r} is not one of {', '.join(TASKS)}")
    _require(isinstance(raw.get("created"), str), "created is missing")
    files = raw.get("files")
    _require(isinstance(files, dict) and bool(files), "files is missing or empty")
    for rel, entry in files.items():
        check_relative_path(rel)
        _require(
            isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("size"), int),
            f"files[{rel!r}] needs sha256 and size",
        )
    model = raw.get("model")
    _require(isinstance(model, dict) and model.get("file") in files, "model.file must name a listed file")
    tokenizer = raw.get("preprocess", {}).get("tokenizer")
    _require(tokenizer is None or tokenizer in files, "preprocess.tokenizer must name a listed file")
    labels = raw.get("postprocess", {}).get("labels")
    if raw["task"] in LABELLED_TASKS:
        _require(labels in files, f"postprocess.labels must name a listed file for {raw['task']}")


def _walk_files(root: Path) -> list[str]:
    """Relative POSIX paths of every non-directory entry; links and special files are refused."""
    found = []
    for current, dirs, names in os.walk(root):
        for name in dirs + names:
            full = Path(current, name)
            rel = full.relative_to(root).as_posix()
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{rel}: symbolic links are not allowed in a bundle")
            if stat.S_ISREG(mode):
                found.append(rel)
            elif not stat.S_ISDIR(mode):
                raise BundleError(f"{rel}: not a regular file")
    return sorted(found)


def _content_files(bundle_dir: Path) -> list[str]:
    return [rel for rel in _walk_files(bundle_dir) if rel not in (MANIFEST, SIGNATURE)]


def _load_manifest_bytes(data: bytes, path: Path | None) -> Manifest:
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{MANIFEST}: not valid JSON ({error})") from None
    validate_manifest(raw)
    return Manifest(raw, path)


def read_manifest(bundle: Path) -> Manifest:
    """The manifest of a bundle directory or .erb archive, validated but NOT verified."""
    bundle = Path(bundle)
    if bundle.is_file():
        return _load_manifest_bytes(_read_archive_member(bundle, MANIFEST), None)
    try:
        data = (bundle / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{bundle}: not a bundle ({MANIFEST} missing)") from None
    return _load_manifest_bytes(data, bundle)


def signature_key_ids(bundle: Path) -> list[str]:
    """Key ids named in signature.json of a directory or archive, NOT verified (for display)."""
    bundle = Path(bundle)
    try:
        data = _read_archive_member(bundle, SIGNATURE) if bundle.is_file() else (bundle / SIGNATURE).read_bytes()
        return [str(entry.get("key_id")) for entry in json.loads(data)["signatures"]]
    except (BundleError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def check_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Every listed file exists with the right size and sha256, and nothing else is there."""
    for rel, entry in sorted(manifest.files.items()):
        path = bundle_dir / rel
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"{rel}: missing")
        if path.stat().st_size != entry["size"]:
            raise BundleError(f"{rel}: size mismatch ({path.stat().st_size} bytes, manifest says {entry['size']})")
        if sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{rel}: sha256 mismatch")
    extra = [rel for rel in _content_files(bundle_dir) if rel not in manifest.files]
    if extra:
        raise BundleError(f"{extra[0]}: not listed in {MANIFEST}")


def _check_signature(bundle_dir: Path, data: bytes, trusted: dict, allow_unsigned: bool) -> tuple[str, ...]:
    sig_path = bundle_dir / SIGNATURE
    if not sig_path.exists():
        if allow_unsigned:
            return ()
        raise BundleError("not signed (pass --allow-unsigned for development)")
    try:
        signatures = json.loads(sig_path.read_text(encoding="utf-8"))["signatures"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise BundleError(f'{SIGNATURE}: malformed (expected {{"signatures": [...]}})') from None
    try:
        return tuple(signing.verify_signatures(data, signatures, trusted))
    except BundleError as error:
        raise BundleError(f"{MANIFEST}: {error}") from None


def _runtime_version() -> str | None:
    from importlib import import_module

    return getattr(import_module("edge_runtime"), "__version__", None)


def _semver_core(text: str) -> tuple[int, ...]:
    match = SEMVER_RE.match(text)
    return tuple(int(match.group(i)) for i in (1, 2, 3)) if match else (0, 0, 0)


def verify(bundle_dir: Path, trusted_keys: dict, allow_unsigned: bool = False) -> Manifest:
    """Signature first (over the exact manifest bytes), then the manifest's schema, then every file.
    A present but invalid signature is refused even with allow_unsigned: that flag admits unsigned bundles only."""
    bundle_dir = Path(bundle_dir)
    try:
        data = (bundle_dir / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{MANIFEST}: missing") from None
    signers = _check_signature(bundle_dir, data, trusted_keys, allow_unsigned)
    manifest = _load_manifest_bytes(data, bundle_dir)
    manifest.signers = signers
    check_files(bundle_dir, manifest)
    runtime = _runtime_version()
    needed = manifest.min_runtime
    if isinstance(needed, str) and runtime and _semver_core(runtime) < _semver_core(needed):
        raise BundleError(f"needs edge-runtime >= {needed} (this is {runtime})")
    return manifest


def finalize(bundle_dir: Path, manifest: dict, private_key=None) -> Manifest:
    """Hash every file into `files`, write manifest.json canonically, and sign it when a key is given."""
    bundle_dir = Path(bundle_dir)
    raw = copy.deepcopy(manifest)
    raw.setdefault("format", FORMAT)
    raw.setdefault("created", datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"))
    raw["files"] = {
        rel: {"sha256": sha256_file(bundle_dir / rel), "size": (bundle_dir / rel).stat().st_size}
        for rel in _content_files(bundle_dir)
    }
    validate_manifest(raw)
    data = canonical_json(raw)
    atomic_write_bytes(bundle_dir / MANIFEST, data)
    sig_path = bundle_dir / SIGNATURE
    signers: tuple[str, ...] = ()
    if private_key is not None:
        entry = signing.sign(private_key, data)
        atomic_write_bytes(sig_path, canonical_json({"signatures": [entry]}))
        signers = (entry["key_id"],)
    elif sig_path.exists():
        sig_path.unlink()  # a stale signature would not match the new manifest
    return Manifest(raw, bundle_dir, signers)


def write_new_version(source: Path, manifest: dict, dest: Path, private_key=None) -> Path:
    """A new version of the bundle in `source` (e.g. recalibrated): its content files with `manifest`
    finalized and signed, staged beside `dest` and renamed to it, so `dest` is whole or absent."""
    source, dest = Path(source), Path(dest)
    if dest.exists():
        raise BundleError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".new-version-", dir=dest.parent))
    try:
        for rel in _content_files(source):
            target = staging / "bundle" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, target, follow_symlinks=False)
        finalize(staging / "bundle", manifest, private_key=private_key)
        (staging / "bundle").rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# --- versions -------------------------------------------------------------------------------------


def bump_patch(version: str) -> str:
    """1.2.3 -> 1.2.4 (pre-release and build tags are dropped: the new version is a release)."""
    core = version.split("+", 1)[0].split("-", 1)[0]
    major, minor, patch = (int(part) for part in core.split("."))
    return f"{major}.{minor}.{patch + 1}"


def next_version_manifest(raw: dict) -> dict:
    """A copy of a manifest for the bundle's next version: patch and release bumped, files and created
    dropped (finalize() writes them again)."""
    manifest = copy.deepcopy(raw)
    for key in ("files", "created"):
        manifest.pop(key, None)
    manifest["version"] = bump_patch(raw["version"])
    manifest["release"] = int(raw["release"]) + 1
    return manifest


# --- archives -------------------------------------------------------------------------------------


def pack(bundle_dir: Path, archive_path: Path) -> Path:
    """Write a plain tar: manifest.json, signature.json, then listed files sorted; fixed owner/mode/mtime,
    so the same bundle always packs to the same bytes. Refuses a bundle whose files do not match."""
    bundle_dir, archive_path = Path(bundle_dir), Path(archive_path)
    manifest = read_manifest(bundle_dir)
    check_files(bundle_dir, manifest)
    members = [MANIFEST] + ([SIGNATURE] if (bundle_dir / SIGNATURE).exists() else []) + sorted(manifest.files)
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{archive_path.name}.", suffix=".tmp", dir=archive_path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel in members:
                    info = tarfile.TarInfo(rel)
                    info.size = (bundle_dir / rel).stat().st_size
                    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
                    with open(bundle_dir / rel, "rb") as source:
                        tar.addfile(info, source)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(archive_path.parent)
    return archive_path


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The checked relative name of a member, None for the '.' directory entry."""
    name = member.name[2:] if member.name.startswith("./") else member.name
    name = name.rstrip("/") if member.isdir() else name
    if name in ("", "."):
        return None
    if (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise BundleError(f"archive member {member.name!r}: unsafe path")
    if member.issym() or member.islnk():
        raise BundleError(f"archive member {member.name!r}: links are not allowed")
    if not (member.isreg() or member.isdir()):
        raise BundleError(f"archive member {member.name!r}: devices, fifos and other special files are not allowed")
    return name


def _open_archive(archive_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive_path, mode="r:*")
    except (tarfile.TarError, OSError) as error:
        raise BundleError(f"{archive_path}: not a bundle archive ({error})") from None


def _read_archive_member(archive_path: Path, wanted: str) -> bytes:
    with _open_archive(archive_path) as tar:
        for member in tar:
            if _member_name(member) == wanted and member.isreg():
                if member.size > MAX_MEMBER_BYTES:
                    raise BundleError(f"archive member {wanted}: too large")
                return tar.extractfile(member).read()
    raise BundleError(f"{archive_path}: not a bundle ({wanted} missing)")


def unpack(
    archive_path: Path,
    dest_dir: Path,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Path:
    """Extract into `dest_dir` (created; must be empty). Only regular files and directories with safe
    relative names are written, each opened O_EXCL|O_NOFOLLOW so nothing is overwritten or followed."""
    archive_path, dest_dir = Path(archive_path), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if any(dest_dir.iterdir()):
        raise BundleError(f"{dest_dir}: destination is not empty")
    total = 0
    with _open_archive(archive_path) as tar:
        for count, member in enumerate(tar, start=1):
            if count > max_members:
                raise BundleError(f"{archive_path}: more than {max_members} members")
            name = _member_name(member)
            if name is None:
                continue
            target = dest_dir / name
            if member.isdir():
                try:
                    target.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise BundleError(f"archive member {name}: cannot extract ({error.strerror})") from None
                continue
            if member.size > max_member_bytes:
                raise BundleError(f"archive member {name}: {member.size} bytes exceeds the {max_member_bytes} limit")
            total += member.size
            if total > max_total_bytes:
                raise BundleError(f"{archive_path}: contents exceed the {max_total_bytes} byte limit")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                _extract_file(tar, member, target, name)
            except OSError as error:
                raise BundleError(f"archive member {name}: cannot extract ({error.strerror})") from None
    return dest_dir


def _extract_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, name: str) -> None:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise BundleError(f"archive member {name}: duplicate entry") from None
    source = tar.extractfile(member)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(min(_CHUNK, member.size - written + 1)):
            written += len(chunk)
            if written > member.size:
                raise BundleError(f"archive member {name}: longer than its header says")
            out.write(chunk)
    if written != member.size:
        raise BundleError(f"archive member {name}: truncated")
