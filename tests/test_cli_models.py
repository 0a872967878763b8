"""`edge-runtime models ...` and `edge-runtime keys ...` as a user runs them: real subprocesses, exit codes, JSON."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime import bundle, signing

from support.bundle_factory import make_bundle

REPO = Path(__file__).resolve().parent.parent


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGE_RUNTIME_HOME": str(root), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args], env=env, capture_output=True, text=True, timeout=120
    )


def ok_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_failure(result: subprocess.CompletedProcess, reason: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], result.stderr


@pytest.fixture
def empty_home(tmp_path):
    """A fresh EDGE_RUNTIME_HOME (conftest's `home` holds the small bundle; these tests start from nothing)."""
    return tmp_path / "home"


@pytest.fixture
def signer(empty_home, tmp_path):
    """A key made and trusted through the CLI; returns (private key path, key id)."""
    out = tmp_path / "fleet.key"
    data = ok_json(run(empty_home, "keys", "generate", "--out", str(out), "--trust", "--json"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    return out, data["key_id"]


def test_keys_generate_trust_list(empty_home, tmp_path, signer):
    key_path, kid = signer
    private_key = signing.load_private_key(key_path)
    assert signing.key_id(private_key.public_key()) == kid
    assert (empty_home / "keys" / "trusted" / f"{kid}.pub").is_file()
    listed = ok_json(run(empty_home, "keys", "list", "--json"))["trusted"]
    assert [row["key_id"] for row in listed] == [kid]
    # trust a second key from its .pub file on another device
    other_home = tmp_path / "other"
    trusted = ok_json(run(other_home, "keys", "trust", str(key_path) + ".pub", "--json"))
    assert trusted["key_id"] == kid
    text = run(empty_home, "keys", "generate", "--out", str(key_path))
    one_line_failure(text, "already exists (pass --force to overwrite)")
    one_line_failure(run(empty_home, "keys", "trust", "not-a-key"), "not a base64 ed25519 public key")


def test_install_inspect_verify_list(empty_home, tmp_path, signer):
    key_path, kid = signer
    source = make_bundle(tmp_path / "b1", signing.load_private_key(key_path)).path
    installed = ok_json(run(empty_home, "models", "install", str(source), "--activate", "--json"))
    assert installed["installed"]["name"] == "tiny" and installed["active"] == {"name": "tiny", "version": "1.0.0"}
    store_path = str(empty_home / "models" / "tiny" / "1.0.0")

    listed = ok_json(run(empty_home, "models", "list", "--json"))
    assert listed["active"] == {"name": "tiny", "version": "1.0.0"}
    assert [(m["name"], m["version"], m["active"], m["path"]) for m in listed["models"]] == [
        ("tiny", "1.0.0", True, store_path)
    ]

    inspected = ok_json(run(empty_home, "models", "inspect", "tiny", "--json"))
    assert inspected["path"] == store_path and inspected["active"] is True
    assert inspected["metrics"]["note"] == "random tiny test model" and inspected["release"] == 1
    assert inspected["signature_key_ids"] == [kid]

    verified = ok_json(run(empty_home, "models", "verify", "tiny@1.0.0", "--json"))
    assert verified["ok"] is True and verified["signed_by"] == [kid] and verified["path"] == store_path
    human = run(empty_home, "models", "verify")
    assert human.returncode == 0 and human.stdout.startswith(f"ok: tiny@1.0.0 (release 1), signed by {kid}")
    text = run(empty_home, "models", "inspect")
    assert text.returncode == 0 and "metrics.note" in text.stdout and store_path in text.stdout


def test_verify_failures_exit_1_with_the_reason(empty_home, tmp_path, signer):
    key_path, kid = signer
    source = make_bundle(tmp_path / "b1", signing.load_private_key(key_path)).path
    archive = bundle.pack(source, tmp_path / "tiny.erb")
    inspected = ok_json(run(empty_home, "models", "inspect", str(archive), "--json"))
    assert (inspected["path"], inspected["signature_key_ids"], inspected["active"]) == (str(archive), [kid], False)
    assert ok_json(run(empty_home, "models", "verify", str(archive), "--json"))["ok"] is True
    data = bytearray((source / "model.onnx").read_bytes())
    data[10] ^= 0xFF
    (source / "model.onnx").write_bytes(bytes(data))
    result = run(empty_home, "models", "verify", str(source), "--json")
    one_line_failure(result, "model.onnx: sha256 mismatch")
    assert json.loads(result.stdout) == {"ok": False, "error": "model.onnx: sha256 mismatch", "ref": str(source)}
    one_line_failure(run(empty_home, "models", "install", str(source)), "model.onnx: sha256 mismatch")
    one_line_failure(run(empty_home, "models", "verify", "ghost"), "ghost: no installed model or bundle path")
    assert ok_json(run(empty_home, "models", "list", "--json"))["models"] == []


def test_unsigned_install_needs_the_flag(empty_home, tmp_path):
    source = make_bundle(tmp_path / "dev").path
    refused = run(empty_home, "models", "install", str(source))
    one_line_failure(refused, "not signed (pass --allow-unsigned for development)")
    result = ok_json(run(empty_home, "models", "install", str(source), "--allow-unsigned", "--activate", "--json"))
    assert result["active"] == {"name": "tiny", "version": "1.0.0"}
    one_line_failure(run(empty_home, "models", "verify"), "not signed")


def test_activate_rollback_remove(empty_home, tmp_path, signer):
    key = signing.load_private_key(signer[0])
    for version, release in (("1.0.0", 1), ("2.0.0", 2)):
        ok_json(
            run(
                empty_home,
                "models",
                "install",
                str(make_bundle(tmp_path / version, key, version=version, release=release).path),
                "--json",
            )
        )
    assert ok_json(run(empty_home, "models", "activate", "tiny@1.0.0", "--json"))["active"]["version"] == "1.0.0"
    switched = ok_json(run(empty_home, "models", "activate", "tiny", "--json"))
    assert switched["active"]["version"] == "2.0.0" and switched["previous"]["version"] == "1.0.0"
    back = ok_json(run(empty_home, "models", "rollback", "--json"))
    assert back["active"]["version"] == "1.0.0" and back["previous"]["version"] == "2.0.0"
    one_line_failure(run(empty_home, "models", "remove", "tiny@1.0.0"), "is the active model")
    one_line_failure(run(empty_home, "models", "remove", "tiny@2.0.0"), "is the rollback target")
    assert run(empty_home, "models", "remove", "tiny").returncode == 2  # usage: needs NAME@VERSION
    assert run(empty_home, "models", "install").returncode == 2
    assert run(empty_home, "models", "list", "--bogus").returncode == 2
    one_line_failure(run(empty_home, "models", "activate", "ghost"), "ghost: not installed")


def test_rollback_with_nothing_to_roll_back(empty_home):
    one_line_failure(run(empty_home, "models", "rollback"), "nothing to roll back to")
    assert "no models installed" in run(empty_home, "models", "list").stdout


def test_key_roles_and_thresholds(empty_home, tmp_path, signer):
    """A key trusted before roles existed (keys/trusted) is a bundle signer only; fleet signers are added
    with --role fleet, each role with its own threshold."""
    key_path, kid = signer
    listed = ok_json(run(empty_home, "keys", "list", "--json"))
    assert [(row["key_id"], row["role"]) for row in listed["trusted"]] == [(kid, "bundle")]
    assert listed["thresholds"] == {"bundle": 1, "fleet": 1}
    second = tmp_path / "second.key"
    ok_json(run(empty_home, "keys", "generate", "--out", str(second), "--json"))
    for path in (key_path, second):
        ok_json(run(empty_home, "keys", "trust", f"{path}.pub", "--role", "fleet", "--threshold", "2", "--json"))
    listed = ok_json(run(empty_home, "keys", "list", "--json"))
    assert sorted(row["role"] for row in listed["trusted"]) == ["bundle", "fleet", "fleet"]
    assert listed["thresholds"] == {"bundle": 1, "fleet": 2}
    assert set(signing.trusted_keys(empty_home, "fleet")) == {
        kid,
        signing.key_id(signing.load_private_key(second).public_key()),
    }
    assert set(signing.trusted_keys(empty_home, "bundle")) == {kid}
    (empty_home / "keys" / "roles.json").write_text("{not json")
    one_line_failure(run(empty_home, "keys", "list"), "roles.json: unreadable")  # fails closed


def test_doctor_warns_about_a_private_signing_key_on_the_device(empty_home):
    from edge_runtime.build.local_key import local_signing_key

    before = json.loads(run(empty_home, "doctor", "--json").stdout)
    assert before["warnings"] == []
    local_signing_key(empty_home)
    after = json.loads(run(empty_home, "doctor", "--json").stdout)
    [warning] = after["warnings"]
    assert "keys/signing/local.key" in warning and "private signing key" in warning
    assert after["problems"] == before["problems"]  # a warning, not a failure
