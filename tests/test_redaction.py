"""Redaction: placeholders out, originals back, policies, and the `redact` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.errors import EdgeRuntimeError, InputError
from edge_runtime.kernels import pii
from edge_runtime.redaction import PrivacyRefused, Redaction, redact, restore

pytestmark = pytest.mark.kernels  # the spans come from the PII scanner kernel

TEXT = (
    "Mail jane@example.com or call +44 20 7946 0958; jane@example.com again, bob@example.org, card 4111 1111 1111 1111."
)


def test_placeholders_numbered_per_kind_in_order():
    result = redact(TEXT)
    assert isinstance(result, Redaction)
    assert result.text == ("Mail <EMAIL_1> or call <PHONE_1>; <EMAIL_1> again, <EMAIL_2>, card <CARD_1>.")
    assert result.mapping == {
        "<EMAIL_1>": "jane@example.com",
        "<PHONE_1>": "+44 20 7946 0958",
        "<EMAIL_2>": "bob@example.org",
        "<CARD_1>": "4111 1111 1111 1111",
    }
    assert result.kinds == {"EMAIL": 3, "PHONE": 1, "CARD": 1}


def test_round_trip_and_upstream_answer():
    result = redact(TEXT)
    assert restore(result.text, result.mapping) == TEXT
    answer = "Sure, I wrote to <EMAIL_2> and <EMAIL_1>; <EMAIL_9> and <CARD> are not mine."
    assert restore(answer, result.mapping) == (
        "Sure, I wrote to bob@example.org and jane@example.com; <EMAIL_9> and <CARD> are not mine."
    )


def test_audit_counts_hold_no_values():
    result = redact(TEXT)
    assert all(value not in json.dumps(result.kinds) for value in result.mapping.values())


def test_nothing_to_redact():
    result = redact("just words and 2024-03-15")
    assert (result.text, result.mapping, result.kinds) == ("just words and 2024-03-15", {}, {})


def test_explicit_spans():
    result = redact("abc secret xyz", spans=[(4, 10, "SECRET")])
    assert result.text == "abc <SECRET_1> xyz"
    with pytest.raises(InputError, match="out of range or overlaps"):
        redact("abc", spans=[(1, 9, "EMAIL")])
    with pytest.raises(InputError, match="unknown PII kind"):
        redact("abc", spans=[(0, 1, "NAME")])


def test_what_a_caller_gets_wrong_is_an_input_error():
    with pytest.raises(InputError, match="needs a str, not bytes"):
        redact(b"mail a@example.com")
    with pytest.raises(InputError, match="unknown PII kind 'NAME' in policy"):
        redact(TEXT, policy={"NAME": "drop"})


def test_policy_drop_and_refuse():
    dropped = redact(TEXT, policy={"EMAIL": "drop"})
    assert dropped.text.startswith("Mail <EMAIL> or call <PHONE_1>; <EMAIL> again, <EMAIL>,")
    assert "<EMAIL>" not in dropped.mapping and dropped.kinds["EMAIL"] == 3
    assert restore(dropped.text, dropped.mapping).count("<EMAIL>") == 3
    with pytest.raises(PrivacyRefused, match="CARD") as refused:
        redact(TEXT, policy={"CARD": "refuse"})
    assert isinstance(refused.value, EdgeRuntimeError)
    assert redact("no card here", policy={"CARD": "refuse"}).text == "no card here"
    with pytest.raises(InputError, match="unknown action"):
        redact(TEXT, policy={"CARD": "shred"})


SAMPLES = [
    "a@example.com",
    "b@example.org",
    "+14155552671",
    "192.168.1.20",
    "fe80::1",
    "aa:bb:cc:dd:ee:ff",
    "GB82WEST12345698765432",
    "plain",
    " ",
    "é",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(SAMPLES), max_size=12).map(" ".join))
def test_round_trip_property(text):
    result = redact(text)
    assert restore(result.text, result.mapping) == text
    assert sum(result.kinds.values()) == len(pii.scan(text))
    assert set(result.mapping.values()) <= {text[s:e] for s, e, _ in pii.scan(text)}


# --- the command ---------------------------------------------------------------------------


def run_cli(args, stdin: bytes, env=None):
    # the scanner's CLI: a device configured without a PII tagger (with one configured but not installed,
    # `redact` refuses; tests/test_pii_tagger.py covers that)
    env = dict(os.environ, PYTHONIOENCODING="utf-8", EDGE_RUNTIME_PRIVACY_TAGGER="", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", "redact", *args], input=stdin, capture_output=True, timeout=120, env=env
    )


def test_cli_json_lines():
    lines = ["mail jane@example.com and jane@example.com", "nothing", "café +33 1 83 41 77 76"]
    done = run_cli(["--json"], "\n".join(lines).encode() + b"\n")
    assert done.returncode == 0, done.stderr
    records = [json.loads(row) for row in done.stdout.decode().splitlines()]
    assert [r["text"] for r in records] == ["mail <EMAIL_1> and <EMAIL_1>", "nothing", "café <PHONE_1>"]
    for line, record in zip(lines, records):
        assert [(s["start"], s["end"], s["kind"]) for s in record["spans"]] == pii.scan(line)
    assert lines[2][5:22] == "+33 1 83 41 77 76" and records[2]["spans"][0]["start"] == 5


def test_cli_plain_and_exit_codes():
    done = run_cli([], b"card 4111-1111-1111-1111\n")
    assert (done.returncode, done.stdout) == (0, b"card <CARD_1>\n")
    refused = run_cli(["--refuse", "CARD"], b"card 4111-1111-1111-1111\n")
    assert refused.returncode == 1 and b"CARD" in refused.stderr and refused.stdout == b""
    assert run_cli(["--refuse", "SHRED"], b"x\n").returncode == 2
    # the spelling of the previous release still works, with a warning, and still checks its input
    old = run_cli(["--policy", "CARD=refuse"], b"card 4111-1111-1111-1111\n")
    assert old.returncode == 1 and b"--policy is deprecated" in old.stderr
    assert run_cli(["--policy", "CARD=shred"], b"x\n").returncode == 2
    assert run_cli(["--nope"], b"x\n").returncode == 2
    broken = run_cli([], b"\xff\xfe\n")
    assert broken.returncode == 1 and b"not valid UTF-8" in broken.stderr


def test_cli_applies_the_daemons_privacy_policy_from_its_config(tmp_path):
    """`redact --config` redacts as the daemon with that file would: [privacy] drop and refuse."""
    config_file = tmp_path / "config.toml"
    config_file.write_text('[privacy]\ntagger = ""\ndrop = ["EMAIL"]\nrefuse = ["IBAN"]\n')
    done = run_cli(["--config", str(config_file)], b"mail jane@example.com, card 4111-1111-1111-1111\n")
    assert done.returncode == 0, done.stderr
    assert b"jane@example.com" not in done.stdout and b"<EMAIL_1>" not in done.stdout  # dropped, no placeholder
    assert b"<CARD_1>" in done.stdout
    refused = run_cli(["--config", str(config_file)], b"iban DE89 3704 0044 0532 0130 00\n")
    assert refused.returncode == 1 and b"IBAN" in refused.stderr
    # the same file through the environment, as the daemon reads it
    via_env = run_cli([], b"iban DE89 3704 0044 0532 0130 00\n", env={"EDGE_RUNTIME_CONFIG": str(config_file)})
    assert via_env.returncode == 1 and b"IBAN" in via_env.stderr
