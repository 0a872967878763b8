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
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from . import signing
from .errors import BundleError
from .fsutil import atomic_write_bytes, fsync_dir
from .tarstream import Member, TarStream

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

# unpack() limits: generous for INT8 models, small enough to stop an archive filling the disk. The manifest and
# signature are read into memory before anything is verified, so they get small caps of their own.
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_MEMBERS = 1000
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 64 << 10
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
    ood = raw.get("postprocess", {}).get("ood")
    if ood is not None:  # its parameters file must be listed, so the manifest's signature covers it
        _require(
            isinstance(ood, dict) and ood.get("file", "ood.npz") in files,
            "postprocess.ood.file must name a listed file",
        )
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


def _verify_signature_bytes(
    signature_bytes: bytes | None, data: bytes, trusted: dict, allow_unsigned: bool, threshold: int = 1
) -> tuple[str, ...]:
    if signature_bytes is None:
        if allow_unsigned:
            return ()
        raise BundleError("not signed (pass --allow-unsigned for development)")
    try:
        signatures = json.loads(signature_bytes.decode("utf-8"))["signatures"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise BundleError(f'{SIGNATURE}: malformed (expected {{"signatures": [...]}})') from None
    try:
        return tuple(signing.verify_signatures(data, signatures, trusted, threshold))
    except BundleError as error:
        raise BundleError(f"{MANIFEST}: {error}") from None


def _check_signature(
    bundle_dir: Path, data: bytes, trusted: dict, allow_unsigned: bool, threshold: int = 1
) -> tuple[str, ...]:
    sig_path = bundle_dir / SIGNATURE
    signature_bytes = sig_path.read_bytes() if sig_path.exists() else None
    return _verify_signature_bytes(signature_bytes, data, trusted, allow_unsigned, threshold)


def _runtime_version() -> str | None:
    from importlib import import_module

    return getattr(import_module("edge_runtime"), "__version__", None)


def _semver_core(text: str) -> tuple[int, ...]:
    match = SEMVER_RE.match(text)
    return tuple(int(match.group(i)) for i in (1, 2, 3)) if match else (0, 0, 0)


def _check_min_runtime(manifest: Manifest) -> None:
    runtime = _runtime_version()
    needed = manifest.min_runtime
    if isinstance(needed, str) and runtime and _semver_core(runtime) < _semver_core(needed):
        raise BundleError(f"needs edge-runtime >= {needed} (this is {runtime})")


def verify(bundle_dir: Path, trusted_keys: dict, allow_unsigned: bool = False, threshold: int = 1) -> Manifest:
    """Signature first (over the exact manifest bytes; `threshold` trusted keys), then the manifest's schema,
    then every file. A present but invalid signature is refused even with allow_unsigned: that flag admits
    unsigned bundles only."""
    bundle_dir = Path(bundle_dir)
    try:
        data = (bundle_dir / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{MANIFEST}: missing") from None
    signers = _check_signature(bundle_dir, data, trusted_keys, allow_unsigned, threshold)
    manifest = _load_manifest_bytes(data, bundle_dir)
    manifest.signers = signers
    check_files(bundle_dir, manifest)
    _check_min_runtime(manifest)
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


@contextmanager
def _archive_stream(archive_path: Path):
    try:
        handle = open(archive_path, "rb")  # noqa: SIM115 - closed below, after the caller's reads
    except OSError as error:
        raise BundleError(f"{archive_path}: not a bundle archive ({error.strerror})") from None
    with handle:
        yield TarStream(handle)


def _read_small(stream: TarStream, member: Member, limit: int) -> bytes:
    if member.size > limit:
        raise BundleError(f"archive member {member.name}: {member.size} bytes exceeds the {limit} byte limit")
    return stream.read(member.size)


def _archive_head(stream: TarStream, archive_path: Path) -> tuple[bytes, bytes | None, Member | None]:
    """manifest.json (the first member), signature.json (the second, if signed) and the member after them,
    read with bounded reads."""
    first = stream.next()
    if first is None or first.is_dir or first.name != MANIFEST:
        raise BundleError(f"{archive_path}: not a bundle archive ({MANIFEST} must be the first member)")
    manifest_bytes = _read_small(stream, first, MAX_MANIFEST_BYTES)
    after = stream.next()
    signature_bytes = None
    if after is not None and after.name == SIGNATURE and not after.is_dir:
        signature_bytes = _read_small(stream, after, MAX_SIGNATURE_BYTES)
        after = stream.next()
    return manifest_bytes, signature_bytes, after


def _read_archive_member(archive_path: Path, wanted: str) -> bytes:
    with _archive_stream(archive_path) as stream:
        manifest_bytes, signature_bytes, _ = _archive_head(stream, archive_path)
    if wanted == MANIFEST:
        return manifest_bytes
    if signature_bytes is None:
        raise BundleError(f"{archive_path}: not signed ({SIGNATURE} missing)")
    return signature_bytes


def _check_archive_limits(manifest: Manifest, max_member_bytes: int, max_total_bytes: int, max_members: int) -> None:
    if len(manifest.files) > max_members:
        raise BundleError(f"{MANIFEST}: lists more than {max_members} files")
    for rel, entry in manifest.files.items():
        if not 0 <= entry["size"] <= max_member_bytes:
            raise BundleError(f"{rel}: {entry['size']} bytes exceeds the {max_member_bytes} byte limit")
    total = sum(entry["size"] for entry in manifest.files.values())
    if total > max_total_bytes:
        raise BundleError(f"{MANIFEST}: contents exceed the {max_total_bytes} byte limit")


def unpack(
    archive_path: Path,
    dest_dir: Path,
    trusted_keys: dict,
    *,
    allow_unsigned: bool = False,
    threshold: int = 1,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Manifest:
    """Verify, then extract into `dest_dir` (created; must be empty): the manifest (the first member) and its
    signature are read with bounded reads and verified before any file is written; then only the files the
    manifest lists are written, each refused as soon as it is larger than its manifest size and hashed while
    it streams. Anything else (unlisted members, links, devices, unsafe paths, oversized headers) is refused.
    On any failure nothing is left in `dest_dir`."""
    archive_path, dest_dir = Path(archive_path), Path(dest_dir)
    created = not dest_dir.exists()
    dest_dir.mkdir(parents=True, exist_ok=True)
    if not created and any(dest_dir.iterdir()):
        raise BundleError(f"{dest_dir}: destination is not empty")
    try:
        with _archive_stream(archive_path) as stream:
            manifest_bytes, signature_bytes, member = _archive_head(stream, archive_path)
            signers = _verify_signature_bytes(signature_bytes, manifest_bytes, trusted_keys, allow_unsigned, threshold)
            manifest = _load_manifest_bytes(manifest_bytes, dest_dir)
            manifest.signers = signers
            _check_archive_limits(manifest, max_member_bytes, max_total_bytes, max_members)
            _check_min_runtime(manifest)
            _write_new(dest_dir / MANIFEST, [manifest_bytes], MANIFEST)
            if signature_bytes is not None:
                _write_new(dest_dir / SIGNATURE, [signature_bytes], SIGNATURE)
            _extract_listed(stream, member, dest_dir, manifest)
    except BaseException:
        if created:
            shutil.rmtree(dest_dir, ignore_errors=True)
        else:
            for entry in list(dest_dir.iterdir()):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise
    return manifest


def _extract_listed(stream: TarStream, member: Member | None, dest_dir: Path, manifest: Manifest) -> None:
    listed_dirs = {parent.as_posix() for rel in manifest.files for parent in PurePosixPath(rel).parents}
    written: set[str] = set()
    while member is not None:
        if member.is_dir:
            if member.name not in listed_dirs:
                raise BundleError(f"archive member {member.name}: not listed in {MANIFEST}")
        elif member.name not in manifest.files:
            raise BundleError(f"archive member {member.name}: not listed in {MANIFEST}")
        elif member.name in written:
            raise BundleError(f"archive member {member.name}: duplicate entry")
        else:
            _extract_file(stream, member, dest_dir, manifest.files[member.name])
            written.add(member.name)
        member = stream.next()
    missing = sorted(set(manifest.files) - written)
    if missing:
        raise BundleError(f"{missing[0]}: missing from the archive")


def _extract_file(stream: TarStream, member: Member, dest_dir: Path, entry: dict) -> None:
    name, expected = member.name, entry["size"]
    if member.size > expected:
        raise BundleError(f"archive member {name}: {member.size} bytes, larger than its manifest size ({expected})")
    if member.size != expected:
        raise BundleError(f"{name}: size mismatch ({member.size} bytes, manifest says {expected})")
    digest = hashlib.sha256()

    def chunks():
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            yield chunk

    target = dest_dir / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BundleError(f"archive member {name}: cannot extract ({error.strerror})") from None
    _write_new(target, chunks(), name)
    if digest.hexdigest() != entry["sha256"]:
        raise BundleError(f"{name}: sha256 mismatch")


def _write_new(target: Path, chunks, name: str) -> None:
    """A new file (O_EXCL|O_NOFOLLOW: nothing is overwritten or followed)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise BundleError(f"archive member {name}: duplicate entry") from None
    except OSError as error:
        raise BundleError(f"archive member {name}: cannot extract ({error.strerror})") from None
    with os.fdopen(fd, "wb") as out:
        for chunk in chunks:
            try:
                out.write(chunk)
            except OSError as error:
                raise BundleError(f"archive member {name}: cannot extract ({error.strerror})") from None
