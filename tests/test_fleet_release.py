"""Release records, desired-state messages, resumable chunk storage and canary choice (no broker needed)."""

from __future__ import annotations

import json
import time

import pytest

from edge_runtime import signing
from edge_runtime.cli import main
from edge_runtime.fleet import probation, protocol, rollout
from edge_runtime.fleet import release as releases
from edge_runtime.fleet.chunks import BadChunk, Download
from edge_runtime.fleet.errors import ChunkError, ProbationError, ReleaseError

from support.fleet_sim import tiny


@pytest.fixture(scope="module")
def keys():
    return [signing.generate_keypair()[0] for _ in range(3)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, keys):
    return tiny(tmp_path_factory.mktemp("b") / "tiny-1.1.0", keys[0], "1.1.0", 2)


def trusted(*private):
    return {signing.key_id(k.public_key()): k.public_key() for k in private}


def test_release_record_pins_the_archive_and_verifies(archive, keys):
    envelope = releases.create(archive, ["lab"], [keys[0]], 3600, chunk_size=64 * 1024)
    signed = envelope["signed"]
    assert signed["bundle"] == {"name": "tiny", "version": "1.1.0", "release": 2} and signed["release"] == 2
    assert signed["archive"]["size"] == archive.stat().st_size
    assert len(signed["archive"]["chunks"]) == -(-archive.stat().st_size // (64 * 1024))
    release = releases.verify(envelope, trusted(keys[0]), group="lab", installed_release=1)
    assert release.ref == "tiny@1.1.0" and release.number == 2


@pytest.mark.parametrize(
    "case, reason",
    [
        ("unsigned", "not signed"),
        ("wrong key", "untrusted key"),
        ("tampered", "bad signature"),
        ("expired", "expired at"),
        ("older", "not newer than installed release 5"),
        ("same", "not newer than installed release 2"),
        ("group", "is for group(s) lab, this device is in shop"),
        ("runtime", "needs edge-runtime >= 99.0.0"),
    ],
)
def test_release_refusals(archive, keys, case, reason):
    now = time.time()
    envelope = releases.create(archive, ["lab"], [keys[0]], 3600, now=now - 7200 if case == "expired" else now)
    group, installed = "lab", {"older": 5, "same": 2}.get(case, 0)
    trust = trusted(keys[0])
    if case == "unsigned":
        envelope["signatures"] = []
    elif case == "wrong key":
        trust = trusted(keys[1])
    elif case == "tampered":
        envelope["signed"]["groups"] = ["lab", "shop"]
    elif case == "group":
        group = "shop"
    elif case == "runtime":
        envelope = releases.sign_envelope({**envelope["signed"], "min_runtime": "99.0.0"}, [keys[0]])
    with pytest.raises(ReleaseError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        releases.verify(envelope, trust, group=group, installed_release=installed, runtime="0.1.0")


def test_threshold_needs_k_distinct_trusted_keys(archive, keys):
    two = releases.create(archive, ["lab"], keys[:2], 3600)
    doubled = {**two, "signatures": [two["signatures"][0]] * 2}
    all_trusted = trusted(*keys)
    assert releases.verify(two, all_trusted, group="lab", installed_release=0, threshold=2).number == 2
    with pytest.raises(ReleaseError, match="only 1 of the 2"):
        releases.verify(doubled, all_trusted, group="lab", installed_release=0, threshold=2)


def test_desired_state_is_signed_and_addressed(archive, keys):
    envelope = releases.create(archive, ["lab"], [keys[0]], 3600)
    data = protocol.encode(
        protocol.build_desired(
            [keys[0]],
            scope="group",
            target="lab",
            seq=7,
            action="install",
            release=envelope,
            stage="canary",
            canaries=["b", "a"],
        )
    )
    signed = protocol.verify_desired(data, trusted(keys[0]), 1, "group", "lab")
    assert signed["seq"] == 7 and signed["canaries"] == ["a", "b"]
    with pytest.raises(ReleaseError, match="addressed to group lab"):
        protocol.verify_desired(data, trusted(keys[0]), 1, "group", "shop")
    forged = json.loads(data)
    forged["signed"]["seq"] = 8
    with pytest.raises(ReleaseError, match="bad signature"):
        protocol.verify_desired(json.dumps(forged).encode(), trusted(keys[0]), 1, "group", "lab")


def test_chunk_round_trip():
    payload = protocol.encode_chunk("ab" * 32, 3, b"\x00\x01data")
    header, data = protocol.decode_chunk(payload)
    assert header["index"] == 3 and data == b"\x00\x01data"
    assert protocol.decode_chunk(b"junk") is None


def test_download_rejects_bad_chunks_and_resumes_from_its_bitmap(archive, keys, tmp_path):
    envelope = releases.create(archive, ["lab"], [keys[0]], 3600, chunk_size=64 * 1024)
    release = releases.check_shape(envelope["signed"])
    blob = archive.read_bytes()
    chunk = lambda i: blob[i * 65536 : (i + 1) * 65536]  # noqa: E731
    download = Download(tmp_path, release).open()
    with pytest.raises(BadChunk, match="chunk 1: sha256"):
        download.write(1, b"\x00" + chunk(1)[1:])
    assert download.part.stat().st_size == 0  # never written
    download.write(0, chunk(0))
    download.write(2, chunk(2))
    with pytest.raises(ChunkError, match="incomplete"):
        download.finish()
    # A torn write after the bitmap was saved: resume re-hashes and drops the damaged chunk.
    with open(download.part, "r+b") as handle:
        handle.seek(2 * 65536)
        handle.write(b"\xff")
    resumed = Download(tmp_path, release).open()
    assert resumed.done == {0}
    for index in resumed.missing():
        resumed.write(index, chunk(index))
    assert resumed.finish().read_bytes() == blob
    resumed.discard()
    assert list(tmp_path.iterdir()) == []


def test_canaries_are_deterministic_and_at_least_one():
    devices = [f"dev-{i:02d}" for i in range(20)]
    first = rollout.choose_canaries(devices, 10, "sha-a")
    assert len(first) == 2 and first == rollout.choose_canaries(list(reversed(devices)), 10, "sha-a")
    assert rollout.choose_canaries(devices[:3], 10, "sha-a") and len(rollout.choose_canaries(devices[:3], 10, "x")) == 1


def test_assess_halts_on_a_failed_canary_and_promotes_when_all_committed():
    plan = {
        "group": "lab",
        "stage": "canary",
        "canaries": ["a", "b"],
        "release": {"number": 3, "sha256": "x", "ref": "tiny@1.2.0"},
    }
    ok = {"group": "lab", "phase": "committed", "release": 3, "active": "tiny@1.2.0"}
    assert rollout.assess(plan, {"a": ok, "b": {**ok, "phase": "probation"}})[0] is None
    assert rollout.assess(plan, {"a": ok, "b": ok}) == ("promote", "all 2 canaries committed")
    bad = {**ok, "phase": "rolled_back", "last_error": "probation: escalation rate 100%"}
    assert rollout.assess(plan, {"a": ok, "b": bad}) == (
        "halt",
        "canary b rolled_back: probation: escalation rate 100%",
    )


def test_cli_release_create(archive, keys, tmp_path, capsys):
    key_file = tmp_path / "fleet.key"
    signing.save_private_key(key_file, keys[0])
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "fleet",
                "release",
                "create",
                str(archive),
                "--group",
                "lab",
                "--expires",
                "2h",
                "--key",
                str(key_file),
                "--out",
                str(out),
                "--chunk-size",
                "65536",
            ]
        )
        == 0
    )
    signed = json.loads(out.read_text())["signed"]
    assert signed["expires_at"] - signed["created_at"] == 7200 and signed["groups"] == ["lab"]
    assert (
        main(
            ["fleet", "release", "create", str(archive), "--group", "lab", "--expires", "soon", "--key", str(key_file)]
        )
        == 1
    )
    assert "duration 'soon'" in capsys.readouterr().err
    assert main(["fleet", "release", "create", str(archive), "--group", "lab"]) == 2
    assert main(["fleet", "release", "create", str(archive), "--group", "bad/group", "--key", str(key_file)]) == 1


def test_desired_states_expire(archive, keys):
    envelope = releases.create(archive, ["lab"], [keys[0]], 3600)
    desired = protocol.build_desired(
        [keys[0]], scope="group", target="lab", seq=3, action="install", release=envelope, ttl_s=600, now=1000.0
    )
    assert desired["signed"]["expires_at"] == 1600
    data = protocol.encode(desired)
    assert protocol.verify_desired(data, trusted(keys[0]), 1, "group", "lab", now=1599.0)["seq"] == 3
    with pytest.raises(ReleaseError, match="desired state seq 3 expired at 1970-01-01T00:26:40Z"):
        protocol.verify_desired(data, trusted(keys[0]), 1, "group", "lab", now=1601.0)
    unbounded = dict(desired["signed"])
    del unbounded["expires_at"]
    with pytest.raises(ReleaseError, match="has no expiry"):
        protocol.verify_desired(
            protocol.encode(releases.sign_envelope(unbounded, [keys[0]])), trusted(keys[0]), 1, "group", "lab"
        )


# --- live probation's judgement (the daemon's /v1/status as input; the clock is a double) --------------


def _status(
    version: str, texts: int, escalated: int, answers: int = 0, agreed: int = 0, samples: int = 0, sampled_ok: int = 0
) -> dict:
    live = {
        "samples": samples,
        "sample_agreement": sampled_ok / samples if samples else None,
        "texts": texts,
        "escalated": escalated,
        "escalation_rate": escalated / texts if texts else None,
        "upstream_answers": answers,
        "agreed": agreed,
        "agreement": agreed / answers if answers else None,
    }
    return {"model": {"name": "m", "version": version, "live": live}}


class FakeClock:
    """Time that passes only when the probation sleeps (a real wait would make these tests slow)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def judge(statuses, baseline, **config):
    clock, replies = FakeClock(), iter(statuses)

    def read_status():
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    settings = probation.ProbationConfig(requests=100, max_wait_s=60, **config)
    return probation.live(read_status, "m@2", baseline, settings, clock=clock, sleep=clock.sleep)


def test_live_probation_waits_for_its_window_then_compares_with_the_previous_model():
    baseline = _status("1", 400, 40, 40, 30)["model"]["live"]  # 10% escalated, 75% agreement
    kept = judge([_status("2", 10, 1), _status("2", 150, 20, 30, 21)], baseline)
    assert kept["texts"] == 150 and kept["baseline"] == baseline and "note" not in kept
    with pytest.raises(ProbationError, match=r"escalation rate 30.0% on 150 texts vs 10.0%"):
        judge([_status("2", 150, 45)], baseline)
    # Agreement on escalations is reported, not judged: a model that escalates fewer, harder texts agrees less on
    # them. Agreement on samples (a random share of the texts it answered itself) is judged.
    harder = judge([_status("2", 150, 5, 30, 15)], baseline)
    assert harder["agreement"] == 0.5 and harder["baseline"]["agreement"] == 0.75 and harder["escalation_rate"] < 0.1
    sampled = _status("1", 400, 40, 40, 30, samples=100, sampled_ok=95)["model"]["live"]
    with pytest.raises(ProbationError, match=r"agreement with the upstream on samples 85.0% \(40\) vs 95.0%"):
        judge([_status("2", 150, 20, samples=40, sampled_ok=34)], sampled)
    assert judge([_status("2", 150, 20, samples=40, sampled_ok=37)], sampled)["sample_agreement"] == 0.925
    assert judge([_status("2", 150, 20, samples=20, sampled_ok=10)], sampled)["samples"] == 20  # too few to judge


def test_live_probation_keeps_a_model_without_traffic_and_fails_on_the_wrong_one():
    quiet = judge([_status("2", 3, 3)] * 100, None)
    assert quiet["note"].startswith("3 texts in 60 s") and quiet["escalation_rate"] == 1.0
    short_baseline = judge([_status("2", 100, 90)], _status("1", 5, 0)["model"]["live"])
    assert short_baseline["escalation_rate"] == 0.9  # a baseline under the window is no reference
    with pytest.raises(ProbationError, match="the daemon serves m@1, not m@2"):
        judge([_status("1", 500, 0)], None)
    assert judge([OSError("refused"), _status("2", 100, 0)], None)["texts"] == 100  # a restart is waited out
    with pytest.raises(ProbationError, match="did not answer for 60 s"):
        judge([OSError("refused")] * 100, None)
