"""Bundle format v1: manifest, hashes, signatures, keys, archives (real files, real ONNX model)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import bundle, signing
from edge_runtime.errors import BundleError
from edge_runtime.tarstream import TarStream

from support.bundle_factory import make_bundle, predict, trusted_signer


@pytest.fixture
def empty_home(tmp_path):
    """Where the trusted keys go: a fresh EDGE_RUNTIME_HOME (conftest's `home` holds the small bundle)."""
    return tmp_path / "home"


@pytest.fixture
def key(empty_home):
    return trusted_signer(empty_home)


@pytest.fixture
def signed(tmp_path, key):
    return make_bundle(tmp_path / "bundle", key).path


def verify(path, root, **kw):
    return bundle.verify(path, signing.trusted_keys(root), **kw)


# --- format --------------------------------------------------------------------------------------


def test_signed_bundle_verifies_and_lists_every_file(signed, empty_home, key):
    manifest = verify(signed, empty_home)
    assert manifest.signers == (signing.key_id(key.public_key()),)
    assert manifest.ref == "tiny@1.0.0" and manifest.release == 1 and manifest.task == "text-classification"
    assert sorted(manifest.files) == ["golden.jsonl", "labels.json", "model.onnx", "tokenizer.json"]
    for rel, entry in manifest.files.items():
        data = (signed / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert manifest.labels() == ["negative", "neutral", "positive"]
    assert manifest.raw["format"] == bundle.FORMAT and manifest.created.endswith("Z")


def test_manifest_is_canonical_json(signed):
    data = (signed / "manifest.json").read_bytes()
    assert bundle.canonical_json(json.loads(data)) == data
    keys = list(json.loads(data))
    assert keys == sorted(keys)


def test_bundle_model_runs_and_matches_golden(signed):
    golden = [json.loads(line) for line in (signed / "golden.jsonl").read_text().splitlines()]
    assert predict(signed, [row["text"] for row in golden]) == [row["label"] for row in golden]


def test_signature_json_shape(signed, key):
    doc = json.loads((signed / "signature.json").read_text())
    (entry,) = doc["signatures"]
    assert entry["algorithm"] == "ed25519" and entry["key_id"] == signing.key_id(key.public_key())
    key.public_key().verify(__import__("base64").b64decode(entry["signature"]), (signed / "manifest.json").read_bytes())


# --- tampering -----------------------------------------------------------------------------------


def flip_byte(path, offset=100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def edit_manifest(path):
    raw = json.loads((path / "manifest.json").read_text())
    raw["routing"]["min_confidence"] = 0.0  # an attacker silencing escalation
    (path / "manifest.json").write_bytes(bundle.canonical_json(raw))


def resign_with_stranger(path):
    stranger, _ = signing.generate_keypair()
    raw = json.loads((path / "manifest.json").read_text())
    bundle.finalize(path, raw, private_key=stranger)


TAMPERING = {
    "flipped byte in model.onnx": (lambda p: flip_byte(p / "model.onnx"), "model.onnx: sha256 mismatch"),
    "appended bytes": (lambda p: open(p / "labels.json", "ab").write(b" "), "labels.json: size mismatch"),
    "edited manifest": (edit_manifest, "manifest.json: signature does not verify with any trusted key"),
    "reformatted manifest": (
        lambda p: (p / "manifest.json").write_text(json.dumps(json.loads((p / "manifest.json").read_text()))),
        "manifest.json: signature does not verify",
    ),
    "wrong key": (resign_with_stranger, "signature does not verify with any trusted key (signed by untrusted key"),
    "missing file": (lambda p: (p / "tokenizer.json").unlink(), "tokenizer.json: missing"),
    "extra file": (lambda p: (p / "extra.txt").write_text("x"), "extra.txt: not listed in manifest.json"),
    "extra file in subdir": (
        lambda p: ((p / "sub").mkdir(), (p / "sub" / "x.bin").write_bytes(b"1")),
        "sub/x.bin: not listed in manifest.json",
    ),
    "unsigned": (lambda p: (p / "signature.json").unlink(), "not signed (pass --allow-unsigned for development)"),
    "garbage signature": (
        lambda p: (p / "signature.json").write_text('{"signatures": [{"key_id": "x"'),
        "signature.json: malformed",
    ),
    "symlink": (lambda p: os.symlink("/etc/passwd", p / "passwd"), "passwd: symbolic links are not allowed"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampering_is_refused_with_a_reason(signed, empty_home, case):
    damage, reason = TAMPERING[case]
    damage(signed)
    with pytest.raises(BundleError) as caught:
        verify(signed, empty_home)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_signature_from_a_trusted_key(signed, empty_home, key):
    doc = json.loads((signed / "signature.json").read_text())
    other = signing.sign(key, b"something else")["signature"]
    doc["signatures"][0]["signature"] = other
    (signed / "signature.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="bad signature from key"):
        verify(signed, empty_home)


def test_unsigned_passes_only_with_the_flag(tmp_path, empty_home):
    path = make_bundle(tmp_path / "dev").path
    assert not (path / "signature.json").exists()
    with pytest.raises(BundleError, match="not signed"):
        verify(path, empty_home)
    assert verify(path, empty_home, allow_unsigned=True).signers == ()
    flip_byte(path / "model.onnx")  # the flag never skips the hashes
    with pytest.raises(BundleError, match="model.onnx: sha256 mismatch"):
        verify(path, empty_home, allow_unsigned=True)


def test_no_trusted_keys_at_all(signed, tmp_path):
    with pytest.raises(BundleError, match="no keys are trusted"):
        bundle.verify(signed, {})


def test_refinalize_without_key_drops_stale_signature(signed, empty_home):
    raw = json.loads((signed / "manifest.json").read_text())
    bundle.finalize(signed, raw)
    assert not (signed / "signature.json").exists()


@pytest.mark.parametrize(
    "field,value,reason",
    [
        ("name", "../escape", "invalid name"),
        ("name", "a@b", "invalid name"),
        ("version", "1.0", "is not semver"),
        ("release", -1, "non-negative integer"),
        ("release", True, "non-negative integer"),
        ("task", "image-classification", "task 'image-classification' is not one of"),
        ("format", "edge-runtime-bundle/2", "unsupported format"),
    ],
)
def test_invalid_manifest_fields(tmp_path, field, value, reason):
    with pytest.raises(BundleError, match=reason):
        make_bundle(tmp_path / "b", manifest_updates={field: value})


def test_bundle_for_a_newer_runtime_is_refused(tmp_path, empty_home, key):
    path = make_bundle(tmp_path / "b", key, manifest_updates={"min_runtime": "99.0.0"}).path
    with pytest.raises(BundleError, match=r"needs edge-runtime >= 99.0.0 \(this is "):
        verify(path, empty_home)


def test_classifier_needs_a_labels_file(tmp_path):
    with pytest.raises(BundleError, match="postprocess.labels must name a listed file"):
        make_bundle(tmp_path / "b", manifest_updates={"postprocess": {"labels": "nope.json"}})


# --- keys ----------------------------------------------------------------------------------------


def test_private_key_file_round_trip(tmp_path):
    private_key, public_key = signing.generate_keypair()
    path = tmp_path / "keys" / "fleet.key"
    signing.save_private_key(path, private_key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = signing.load_private_key(path)
    assert signing.key_id(loaded.public_key()) == signing.key_id(public_key)
    assert [p.name for p in path.parent.iterdir()] == ["fleet.key"]  # no temp file left


def test_key_id_and_text_form():
    _, public_key = signing.generate_keypair()
    text = signing.public_key_to_text(public_key)
    raw = __import__("base64").b64decode(text)
    assert len(raw) == 32
    assert signing.key_id(public_key) == hashlib.sha256(raw).hexdigest()[:16]
    assert signing.key_id(signing.public_key_from_text(text + "\n")) == signing.key_id(public_key)


@pytest.mark.parametrize("text", ["", "not base64!", "AAAA"])
def test_bad_public_key_text(text):
    with pytest.raises(BundleError, match="public key"):
        signing.public_key_from_text(text)


def test_load_private_key_rejects_other_files(tmp_path):
    path = tmp_path / "x.key"
    path.write_text("hello")
    with pytest.raises(BundleError, match="not an unencrypted PEM private key"):
        signing.load_private_key(path)


def test_trusted_keys_recompute_ids(empty_home):
    _, public_key = signing.generate_keypair()
    kid = signing.trust_key(empty_home, public_key)
    (empty_home / "keys" / "trusted" / f"{kid}.pub").rename(empty_home / "keys" / "trusted" / "renamed.pub")
    assert list(signing.trusted_keys(empty_home)) == [kid]


def test_k_of_n_threshold():
    data = b"manifest bytes"
    (a, pa), (b, pb) = signing.generate_keypair(), signing.generate_keypair()
    trusted = {signing.key_id(pa): pa, signing.key_id(pb): pb}
    both = [signing.sign(a, data), signing.sign(b, data)]
    assert sorted(signing.verify_signatures(data, both, trusted, threshold=2)) == sorted(trusted)
    with pytest.raises(BundleError, match="only 1 of the 2"):
        signing.verify_signatures(data, [both[0], both[0]], trusted, threshold=2)  # one key counts once


# --- versions ------------------------------------------------------------------------------------


def test_bump_patch():
    assert bundle.bump_patch("1.2.3") == "1.2.4"
    assert bundle.bump_patch("0.1.9-rc.1+build5") == "0.1.10"


def test_next_version_manifest_bumps_and_leaves_the_original_alone(signed):
    raw = bundle.read_manifest(signed).raw
    before = json.loads(json.dumps(raw))
    nxt = bundle.next_version_manifest(raw)
    assert raw == before
    assert (nxt["version"], nxt["release"]) == (bundle.bump_patch(raw["version"]), raw["release"] + 1)
    assert "files" not in nxt and "created" not in nxt  # finalize() writes them for the new files
    assert {k: v for k, v in nxt.items() if k not in ("version", "release")} == {
        k: v for k, v in raw.items() if k not in ("version", "release", "files", "created")
    }


# --- archives ------------------------------------------------------------------------------------


def test_archive_round_trip(signed, tmp_path, empty_home):
    archive = bundle.pack(signed, tmp_path / "tiny.erb")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[:2] == ["manifest.json", "signature.json"] and names[2:] == sorted(names[2:])
    assert bundle.read_manifest(archive).ref == "tiny@1.0.0"
    unpacked = bundle.unpack(archive, tmp_path / "out", signing.trusted_keys(empty_home))
    assert unpacked.signers == verify(signed, empty_home).signers
    out = unpacked.path
    assert verify(out, empty_home).ref == "tiny@1.0.0"
    for rel in ("model.onnx", "manifest.json", "signature.json"):
        assert (out / rel).read_bytes() == (signed / rel).read_bytes()


def test_pack_is_deterministic(signed, tmp_path):
    first = bundle.pack(signed, tmp_path / "a.erb").read_bytes()
    os.utime(signed / "model.onnx", (1, 1))
    assert bundle.pack(signed, tmp_path / "b.erb").read_bytes() == first


def test_pack_refuses_a_damaged_bundle(signed, tmp_path):
    flip_byte(signed / "model.onnx")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        bundle.pack(signed, tmp_path / "x.erb")
    assert not (tmp_path / "x.erb").exists()


def evil_archive(path, *members, head=None):
    """members: (TarInfo, bytes | None), after `head` (a signed bundle dir whose manifest and signature
    come first, as in a real archive)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in (bundle.MANIFEST, bundle.SIGNATURE) if head else ():
            tar.add(head / name, arcname=name)
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    "members,reason",
    [
        ([(member("../evil.txt"), b"x")], "unsafe path"),
        ([(member("a/../../evil.txt"), b"x")], "unsafe path"),
        ([(member("/tmp/evil.txt"), b"x")], "unsafe path"),
        ([(member("link", tarfile.SYMTYPE, "/etc/passwd"), None)], "links are not allowed"),
        ([(member("hard", tarfile.LNKTYPE, "manifest.json"), None)], "links are not allowed"),
        ([(member("dev", tarfile.CHRTYPE), None)], "devices, fifos"),
        ([(member("fifo", tarfile.FIFOTYPE), None)], "devices, fifos"),
        ([(member("labels.json"), b"[]")], "labels.json: size mismatch"),
        ([(member("big.bin"), b"x" * 2048)], "not listed in manifest.json"),
        ([(member("model.onnx"), b"x" * (1 << 20))], "larger than its manifest size"),
    ],
)
def test_malicious_archives_are_refused(tmp_path, signed, empty_home, members, reason):
    archive = evil_archive(tmp_path / "evil.erb", *members, head=signed)
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(BundleError, match=reason):
        bundle.unpack(archive, dest, signing.trusted_keys(empty_home))
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()
    assert not dest.exists()  # nothing is left behind


def test_a_listed_file_twice_is_refused(tmp_path, signed, empty_home):
    labels = (signed / "labels.json").read_bytes()
    archive = evil_archive(tmp_path / "twice.erb", *[(member("labels.json"), labels)] * 2, head=signed)
    with pytest.raises(BundleError, match="labels.json: duplicate entry"):
        bundle.unpack(archive, tmp_path / "dest", signing.trusted_keys(empty_home))
    assert not (tmp_path / "dest").exists()


def test_manifest_must_come_first(tmp_path, signed, empty_home):
    archive = evil_archive(tmp_path / "late.erb", (member("labels.json"), (signed / "labels.json").read_bytes()))
    with tarfile.open(archive, "a") as tar:
        tar.add(signed / bundle.MANIFEST, arcname=bundle.MANIFEST)
    with pytest.raises(BundleError, match="manifest.json must be the first member"):
        bundle.unpack(archive, tmp_path / "dest", signing.trusted_keys(empty_home))
    assert not (tmp_path / "dest").exists()


def test_an_oversized_manifest_is_refused_before_it_is_parsed(tmp_path, empty_home):
    archive = evil_archive(tmp_path / "fat.erb", (member("manifest.json"), b" " * (bundle.MAX_MANIFEST_BYTES + 1)))
    with pytest.raises(BundleError, match=f"manifest.json: {bundle.MAX_MANIFEST_BYTES + 1} bytes exceeds"):
        bundle.unpack(archive, tmp_path / "dest", signing.trusted_keys(empty_home))
    with pytest.raises(BundleError, match="exceeds the 1048576 byte limit"):
        bundle.read_manifest(archive)
    assert not (tmp_path / "dest").exists()


def test_symlink_then_write_through_it_is_refused(tmp_path, signed, empty_home):
    # The classic two-step escape: a link member, then a file "through" the link.
    archive = evil_archive(
        tmp_path / "evil.erb",
        (member("d", tarfile.SYMTYPE, str(tmp_path)), None),
        (member("d/evil.txt"), b"x"),
        head=signed,
    )
    with pytest.raises(BundleError, match="links are not allowed"):
        bundle.unpack(archive, tmp_path / "dest", signing.trusted_keys(empty_home))
    assert not (tmp_path / "evil.txt").exists()


def test_limits_are_checked_against_the_verified_manifest(tmp_path, signed, empty_home):
    archive = bundle.pack(signed, tmp_path / "t.erb")
    trusted = signing.trusted_keys(empty_home)
    with pytest.raises(BundleError, match="contents exceed the 1000 byte limit"):
        bundle.unpack(archive, tmp_path / "a", trusted, max_total_bytes=1000)
    with pytest.raises(BundleError, match="exceeds the 1024 byte limit"):
        bundle.unpack(archive, tmp_path / "b", trusted, max_member_bytes=1024)
    with pytest.raises(BundleError, match="more than 2 files"):
        bundle.unpack(archive, tmp_path / "c", trusted, max_members=2)
    assert not any((tmp_path / d).exists() for d in "abc")


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_archive_made_by_tar_tools_with_dot_prefix(signed, tmp_path, empty_home, compression):
    """GNU tar style './name' members, possibly compressed, manifest and signature first."""
    archive = tmp_path / "dot.erb"
    with tarfile.open(archive, f"w:{compression}", format=tarfile.GNU_FORMAT) as tar:
        tar.add(signed, arcname=".", recursive=False)
        for name in ["manifest.json", "signature.json", *sorted(bundle.read_manifest(signed).files)]:
            tar.add(signed / name, arcname=f"./{name}")
    unpacked = bundle.unpack(archive, tmp_path / "out", signing.trusted_keys(empty_home))
    assert verify(unpacked.path, empty_home).ref == "tiny@1.0.0"


def test_not_an_archive(tmp_path, empty_home):
    junk = tmp_path / "junk.erb"
    junk.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(BundleError, match="not a bundle archive"):
        bundle.unpack(junk, tmp_path / "out", signing.trusted_keys(empty_home))


def test_unpack_into_non_empty_dir_is_refused(signed, tmp_path, empty_home):
    archive = bundle.pack(signed, tmp_path / "t.erb")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep").write_text("mine")
    with pytest.raises(BundleError, match="not empty"):
        bundle.unpack(archive, tmp_path / "busy", signing.trusted_keys(empty_home))
    assert (tmp_path / "busy" / "keep").read_text() == "mine"


# --- the bounded tar reader against tarfile's writer ----------------------------------------------

_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-é", min_size=1, max_size=40).filter(
    lambda part: part not in (".", "..")
)
_members = st.dictionaries(
    st.lists(_segment, min_size=1, max_size=4).map("/".join), st.binary(max_size=3000), min_size=1, max_size=6
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=_members, tar_format=st.sampled_from([tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))
def test_tarstream_reads_what_tarfile_writes(members, tar_format):
    """Names (long and non-ASCII ones go to PAX headers or the ustar prefix) and data come back exactly."""
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    except ValueError:  # ustar cannot hold this name (too long or not ASCII-splittable): not our case
        return
    buffer.seek(0)
    stream, seen = TarStream(buffer), {}
    while (item := stream.next()) is not None:
        chunks = []
        while chunk := stream.read(1000):
            chunks.append(chunk)
        seen[item.name] = b"".join(chunks)
    assert seen == members
