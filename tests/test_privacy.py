"""On-device privacy: what leaves the device on the real escalation path holds no raw personal data.

A seeded Faker corpus (several locales) puts emails, phones, cards, IBANs and IPs into ordinary sentences;
a router that escalates everything sends each through Pipeline -> Egress (redaction) -> Outbox (SQLite) and,
in the MQTT variant, -> Uplink -> real mosquitto -> Worker. The payloads are read back from the outbox
database and from a subscriber on the escalation topic.

Person names and postal addresses are found by the PII tagger bundle (models/pii-tagger-minilm, built
once per session exactly as its recipe ships: conftest.pii_tagger_bundle), which egress runs beside the
regex scanner; the corpus's sentences are not among the tagger's training clauses.
The TTL test drives the Egress with a fake clock (the only stand-in: a real hour cannot pass in a test).
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import edge_runtime
from edge_runtime import escalation
from edge_runtime.audit import AuditLog
from edge_runtime.egress import Egress
from edge_runtime.outbox import Outbox
from edge_runtime.pipeline import Pipeline
from edge_runtime.router import Router, RoutingPolicy

from support import bundle_factory, mqtt_broker

pytestmark = pytest.mark.kernels  # what leaves the device is what the PII scanner and the tagger's kernels find

CARD_TYPES = ["visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners", "jcb15", "jcb16"]
LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "nl_NL", "es_ES", "it_IT"]
COVERED = ("EMAIL", "PHONE", "CARD", "IBAN", "IPV4", "IPV6", "PERSON", "ADDRESS")
SENTENCES = [
    "Hi, this is {name}, please send the invoice to {EMAIL} before Friday.",
    "You can reach me on {PHONE} after 6pm, ask for {name}.",
    "My card {CARD} was charged twice for the same order.",
    "Please refund the amount to my account {IBAN}, thanks.",
    "The router at {IPV4} keeps dropping the connection since yesterday.",
    "Our server {IPV6} is blocked by your firewall, can you check?",
    "{name} here: change the contact from {EMAIL} to my phone {PHONE}.",
    "Transfer 200 euros from {IBAN} and bill the rest to card {CARD}.",
    "The replacement should go to {ADDRESS}, not to my old flat.",
    "I told {name} that the parcel for {ADDRESS} never came.",
]


def pii_corpus(seed: int = 4, per_locale: int = 12) -> list[tuple[str, dict[str, list[str]], str]]:
    """(sentence, {kind: [raw values]}, person name) per example; PERSON values are the name without
    honorifics or degrees ("Dr.", "MBA" identify nobody)."""
    from faker import Faker

    from edge_runtime.build.pii_corpus import name_core

    rng = random.Random(seed)
    examples = []
    for locale in LOCALES:
        fake = Faker(locale)
        fake.seed_instance(seed)
        for _ in range(per_locale):
            template = rng.choice(SENTENCES)
            card = fake.credit_card_number(card_type=rng.choice(CARD_TYPES))
            if rng.random() < 0.3:
                card = " ".join(card[k : k + 4] for k in range(0, len(card), 4))
            name = fake.name()
            values = {
                "EMAIL": fake.email(),
                "PHONE": fake.phone_number(),
                "CARD": card,
                "IBAN": fake.iban(),
                "IPV4": fake.ipv4(),
                "IPV6": fake.ipv6(),
                "ADDRESS": re.sub(r"\s*\n\s*", ", ", fake.address()),
            }
            used = {kind: [value] for kind, value in values.items() if "{" + kind + "}" in template}
            if "{name}" in template:
                used["PERSON"] = [name[slice(*name_core(name))]]
            examples.append((template.format(name=name, **values), used, name))
    return examples


def _words(value: str) -> list[str]:
    """The identifying words of a name or address: the capitalised ones ("van", "rue" and a bare house
    number are not; a number alone would also match timestamps in the audit log)."""
    return [w for w in re.findall(r"[\w'’-]+", value) if len(w) >= 2 and w[0].isupper()]


def leaks(payload: str, values: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Raw values found in a payload, also in compact form (spaces, dashes and dots removed); for names
    and addresses, any of their identifying words (a surname alone is still a leak)."""
    compact = re.sub(r"[\s\-.()]", "", payload)
    found = []
    for kind, items in values.items():
        for value in items:
            squeezed = re.sub(r"[\s\-.()]", "", value)
            if value in payload or (len(squeezed) >= 8 and squeezed in compact):
                found.append((kind, value))
            elif kind in ("PERSON", "ADDRESS"):
                found += [
                    (kind, word) for word in _words(value) if re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", payload)
                ]
    return found


@pytest.fixture(scope="module")
def corpus():
    pytest.importorskip("faker")
    return pii_corpus()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real (tiny) ONNX classifier bundle: the model's answer does not matter, only what leaves the device."""
    root = tmp_path_factory.mktemp("privacy-home")
    key = bundle_factory.trusted_signer(root)
    bundle_factory.make_bundle(root / "tiny", key)
    return edge_runtime.load(root / "tiny", root=root)


def escalate_everything(model) -> Router:
    return Router(RoutingPolicy.from_dict({"always_escalate": model.labels}))


def outbox_payloads(path: Path) -> list[dict]:
    with sqlite3.connect(path) as db:
        return [json.loads(row[0]) for row in db.execute("SELECT payload FROM requests ORDER BY seq")]


def test_corpus_is_varied(corpus):
    kinds = {kind for _, values, _ in corpus for kind in values}
    assert kinds == set(COVERED) and len(corpus) == len(LOCALES) * 12
    assert leaks("Dr. Ann Lee wrote", {"PERSON": ["Ann Lee"]}) == [("PERSON", "Ann Lee")]
    assert leaks("Lee wrote", {"PERSON": ["Ann Lee"]}) == [("PERSON", "Lee")]  # a surname alone leaks
    assert leaks("<PERSON_1> wrote from Leeds", {"PERSON": ["Ann Lee"]}) == []
    assert len({values.get("PHONE", [""])[0][:3] for _, values, _ in corpus}) > 5  # several phone formats


def test_outbox_payloads_hold_no_raw_values(corpus, tiny, pii_tagger, tmp_path):
    audit_path = tmp_path / "audit.jsonl"
    outbox = Outbox(tmp_path / "outbox.sqlite")
    pipeline = Pipeline(
        tiny, escalate_everything(tiny), egress=Egress(audit=AuditLog(audit_path), tagger=pii_tagger), outbox=outbox
    )
    answers = pipeline.predict([text for text, _, _ in corpus])
    outbox.close()
    assert {a.decision for a in answers} == {"deferred"}
    payloads = outbox_payloads(tmp_path / "outbox.sqlite")
    assert len(payloads) == len(corpus)
    by_id = {p["id"]: p for p in payloads}
    for (text, values, _), answer in zip(corpus, answers):
        payload = json.dumps(by_id[answer.request_id], ensure_ascii=False)
        assert leaks(payload, values) == [], text
        placeholders = re.findall(r"<([A-Z0-9]+)_\d+>", by_id[answer.request_id]["text"])
        assert len(placeholders) >= len(values), text
        # each kind under its own placeholder; where the scanner misses a value, the tagger may still
        # cover it under its own kind (an Italian mobile without prefix, "329924188", comes out ADDRESS)
        missed = [kind for kind in values if kind not in placeholders]
        assert all(kind == "PHONE" for kind in missed), (text, placeholders)

    # the audit log says which kinds were removed and why, never a value or the text
    entries = [json.loads(line) for line in audit_path.read_text().splitlines()]
    assert len(entries) == len(corpus)
    for entry, (_text, values, _) in zip(entries, corpus):
        assert entry["event"] == "escalated" and entry["reason"].startswith("always_escalate:")
        assert set(values) - {"PHONE"} <= set(entry["redacted"]) <= set(values) | {"PERSON", "ADDRESS"}
    audit_text = audit_path.read_text()
    assert all(leaks(audit_text, values) == [] for _, values, _ in corpus)
    assert all(text[:30] not in audit_text for text, _, _ in corpus)


def test_without_the_tagger_names_leave_the_device(corpus, tiny, tmp_path):
    """Why egress runs the tagger: the regex scanner alone finds structured identifiers, not names."""
    with_names = [(text, name) for text, _, name in corpus if name in text]
    outbox = Outbox(tmp_path / "outbox.sqlite")
    Pipeline(tiny, escalate_everything(tiny), outbox=outbox).predict([text for text, _ in with_names])
    outbox.close()
    sent = " ".join(p["text"] for p in outbox_payloads(tmp_path / "outbox.sqlite"))
    assert with_names and all(name in sent for _, name in with_names)


def test_refuse_policy_keeps_the_text_on_the_device(corpus, tiny, tmp_path):
    audit_path = tmp_path / "audit.jsonl"
    outbox = Outbox(tmp_path / "outbox.sqlite")
    egress = Egress(policy={"EMAIL": "refuse"}, audit=AuditLog(audit_path))
    texts = [text for text, values, _ in corpus]
    answers = Pipeline(tiny, escalate_everything(tiny), egress=egress, outbox=outbox).predict(texts)
    outbox.close()
    with_email = [("EMAIL" in values) for _, values, _ in corpus]
    assert any(with_email) and not all(with_email)
    for answer, has_email in zip(answers, with_email):
        if has_email:
            assert answer.decision == "local" and answer.reason.startswith("privacy_refused:always_escalate:")
            assert answer.request_id is None
        else:
            assert answer.decision == "deferred"
    sent = outbox_payloads(tmp_path / "outbox.sqlite")
    assert len(sent) == len(with_email) - sum(with_email)
    refused = [
        json.loads(line) for line in audit_path.read_text().splitlines() if json.loads(line)["event"] == "refused"
    ]
    assert len(refused) == sum(with_email)
    assert all("EMAIL" in entry["refused"] for entry in refused)
    assert all(leaks(audit_path.read_text(), values) == [] for _, values, _ in corpus)


def test_without_the_required_tagger_nothing_leaves_and_the_audit_log_says_why(corpus, tiny, tmp_path):
    audit_path = tmp_path / "audit.jsonl"
    outbox = Outbox(tmp_path / "outbox.sqlite")
    egress = Egress(audit=AuditLog(audit_path), required_tagger="pii-tagger-minilm")  # configured, not loaded
    answers = Pipeline(tiny, escalate_everything(tiny), egress=egress, outbox=outbox).predict(
        [text for text, _, _ in corpus]
    )
    outbox.close()
    assert all(a.decision == "local" and a.reason.startswith("privacy_unavailable:") for a in answers)
    assert all(a.request_id is None for a in answers)
    assert outbox_payloads(tmp_path / "outbox.sqlite") == []
    events = [json.loads(line) for line in audit_path.read_text().splitlines()]
    assert {e["event"] for e in events} == {"kept_local"} and len(events) == len(corpus)
    assert events[0]["unavailable"] == "PII tagger pii-tagger-minilm is not loaded"


def test_a_tagger_that_fails_on_a_text_keeps_that_text_local(pii_tagger, tiny, tmp_path, monkeypatch):
    """An onnxruntime failure inside the tagger is injected (it cannot be provoked on demand): the names in
    that text were not looked for, so it must not leave; the next text goes out redacted as usual."""
    outbox = Outbox(tmp_path / "outbox.sqlite")
    egress = Egress(tagger=pii_tagger, required_tagger="pii-tagger-minilm")
    pipeline = Pipeline(tiny, escalate_everything(tiny), egress=egress, outbox=outbox)
    real_spans = pii_tagger.spans

    def fails_once(text):
        monkeypatch.setattr(pii_tagger, "spans", real_spans)
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION (injected)")

    monkeypatch.setattr(pii_tagger, "spans", fails_once)
    first, second = pipeline.predict(["this is Rosalind Featherstonehaugh", "this is Rosalind Featherstonehaugh"])
    outbox.close()
    assert (first.decision, first.reason.split(":")[0]) == ("local", "privacy_unavailable"), first
    assert second.decision == "deferred", second
    [sent] = outbox_payloads(tmp_path / "outbox.sqlite")
    assert "Featherstonehaugh" not in sent["text"] and "<PERSON_1>" in sent["text"]


def test_twelve_digit_maestro_cards_are_redacted(tiny, tmp_path):
    from faker import Faker

    fake = Faker("en_GB")
    fake.seed_instance(7)
    cards = [fake.credit_card_number(card_type="maestro") for _ in range(5)]
    outbox = Outbox(tmp_path / "outbox.sqlite")
    Pipeline(tiny, escalate_everything(tiny), outbox=outbox).predict([f"my card {c} was declined" for c in cards])
    outbox.close()
    sent = json.dumps(outbox_payloads(tmp_path / "outbox.sqlite"))
    assert leaks(sent, {"CARD": cards}) == []


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_placeholders_restore_the_answer_locally_until_the_ttl(tiny, tmp_path):
    clock = FakeClock()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    pipeline = Pipeline(tiny, escalate_everything(tiny), egress=Egress(ttl_s=60, clock=clock), outbox=outbox)
    text = "send the receipt to ana.lopez@example.org and call +44 20 7946 0958"
    (answer,) = pipeline.predict([text])
    request = json.loads(outbox.payload(answer.request_id))
    assert "ana.lopez@example.org" not in request["text"] and "<EMAIL_1>" in request["text"]
    # the upstream answers in terms of the placeholders it saw
    reply = escalation.build_answer(
        answer.request_id, {"label": "receipt", "reply": f"done: {request['text']}"}, worker="w1"
    )
    assert outbox.record_answers([(answer.request_id, escalation.encode(reply))]) == [answer.request_id]
    restored = pipeline.answer(answer.request_id)
    assert restored["reply"] == f"done: {text}"
    clock.now += 61  # past the TTL the mapping is gone: placeholders stay placeholders
    expired = pipeline.answer(answer.request_id)
    assert "ana.lopez@example.org" not in json.dumps(expired) and "<EMAIL_1>" in expired["reply"]
    outbox.close()


@pytest.mark.mqtt
@pytest.mark.skipif(not mqtt_broker.available(), reason="mosquitto is not installed")
def test_mqtt_escalations_hold_no_raw_values(corpus, tiny, pii_tagger, tmp_path):
    import paho.mqtt.client as paho

    from edge_runtime.mqtt import BrokerConfig
    from edge_runtime.uplink import Uplink
    from edge_runtime.worker import Worker

    def echo(request: dict) -> dict:  # an upstream that quotes the (redacted) text back
        return {"label": request["text"], "score": 0.99}

    seen: list[bytes] = []  # list.append is atomic: paho's thread appends, the test reads
    with mqtt_broker.Broker() as broker:
        config = BrokerConfig.from_url(broker.url, backoff_min_s=0.05, backoff_max_s=0.5, keepalive=5)
        probe = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        subscribed = threading.Event()
        probe.on_message = lambda client, userdata, message: seen.append(message.payload)
        probe.on_subscribe = lambda *args: subscribed.set()
        probe.connect("127.0.0.1", broker.port)
        probe.subscribe("edge/+/escalations", qos=1)
        probe.loop_start()
        try:
            assert subscribed.wait(10)
            with (
                Worker(config, echo) as worker,
                Uplink(
                    "privacy-dev", config, Outbox(tmp_path / "o.sqlite"), bundle=(tiny.name, tiny.version)
                ) as uplink,
            ):
                worker.wait_ready(5)
                uplink.wait_ready(5)
                pipeline = Pipeline(
                    tiny, escalate_everything(tiny), egress=Egress(tagger=pii_tagger), uplink=uplink, deadline_s=20
                )
                sample = corpus[::4]
                answers = pipeline.predict([text for text, _, _ in sample])
                deadline = time.monotonic() + 20
                while len(seen) < len(sample) and time.monotonic() < deadline:
                    time.sleep(0.02)
        finally:
            probe.loop_stop()
            probe.disconnect()
    assert len(seen) >= len(sample)
    wire = [json.loads(payload) for payload in seen]
    by_id = {message["id"]: message for message in wire}
    for (text, values, _), answer in zip(sample, answers):
        assert answer.decision == "escalate"
        assert leaks(json.dumps(by_id[answer.request_id], ensure_ascii=False), values) == []
        # the echoed answer came back with placeholders and was re-identified on the device
        assert answer.label == text


@pytest.mark.mqtt
def test_samples_leave_redacted_and_never_for_a_private_label(tiny, tmp_path):
    """routing.sample_rate = 1: every text the device answers itself goes upstream as a sample, through the same
    egress (no raw e-mail or card in any payload), except a text whose label is private."""
    from edge_runtime.mqtt import BrokerConfig
    from edge_runtime.uplink import Uplink

    texts = [
        f"write to {name}.doe@example.com about card 4111 1111 1111 1111, order {n}"
        for n, name in enumerate(("jane", "john", "ada", "alan", "grace", "linus"))
    ]
    labels = [p.label for p in tiny.predict(texts)]
    private = labels[0]
    policy = {"min_confidence": 0, "min_margin": 0, "max_entropy": 1, "sample_rate": 1}
    router = Router(RoutingPolicy.from_dict({**policy, "private_labels": [private], "private_label_floor": 1.0}))
    with mqtt_broker.Broker() as broker:
        config = BrokerConfig.from_url(broker.url, backoff_min_s=0.05, backoff_max_s=0.5, keepalive=5)
        with Uplink("sample-dev", config, Outbox(tmp_path / "o.sqlite"), bundle=(tiny.name, tiny.version)) as uplink:
            uplink.wait_ready(5)
            answers = Pipeline(tiny, router, egress=Egress(), uplink=uplink).predict(texts)
            shared = [text for text, label in zip(texts, labels) if label != private]
            deadline = time.monotonic() + 20
            while len(outbox_payloads(tmp_path / "o.sqlite")) < len(shared) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # a sample that should not exist would be stored by now too
            payloads = outbox_payloads(tmp_path / "o.sqlite")
    assert [a.decision for a in answers] == ["local"] * len(texts)
    assert [a.label for a in answers] == labels  # the device's own answers stand
    assert all(a.reason.startswith("private_label:") for a, label in zip(answers, labels) if label == private)
    assert len(payloads) == len(shared) and {p["reason"] for p in payloads} == {"sample"}
    for payload in payloads:
        wire = json.dumps(payload)
        assert "doe@example.com" not in wire and "4111" not in wire, wire
        assert "<EMAIL_1>" in payload["text"] and "<CARD_1>" in payload["text"]
