"""Bulk delivery from untrusted HTTP mirrors: a real nginx (Debian's) serving the content-addressed layout
`fleet mirror sync` writes, the device's range-request fetch, and real agent processes that take the archive
from the mirrors and only what those could not supply over MQTT (a real mosquitto). HTTPS mirrors (certificates
made here with `cryptography`) and private mirrors (credentials from the device's config) too."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_runtime import config as configuration
from edge_runtime import signing
from edge_runtime.cli import main
from edge_runtime.errors import ConfigError
from edge_runtime.fleet import mirror as mirrors
from edge_runtime.fleet import protocol
from edge_runtime.fleet import release as releases
from edge_runtime.fleet.chunks import Download, read_chunk
from edge_runtime.fleet.errors import ReleaseError
from edge_runtime.fleet.fleetdir import FleetDir
from edge_runtime.fleet.http_fetch import MirrorConfig, fetch_from_mirrors
from edge_runtime.fleet.mirror_access import MirrorAccess, MirrorAccessError, origin
from edge_runtime.mqtt import BrokerConfig, Link

from support import free_port, mqtt_broker, nginx
from support.fleet_sim import BrokerTraffic, Device, ServedManager, tiny

CHUNK = 32 * 1024
FAST = MirrorConfig(timeout_s=3.0)


@pytest.fixture(scope="module")
def archives(tmp_path_factory, fleet_key):
    src = tmp_path_factory.mktemp("bundles")
    return {
        "v1": tiny(src / "tiny-1.0.0", fleet_key, "1.0.0", 1),
        "v2": tiny(src / "tiny-1.1.0", fleet_key, "1.1.0", 2),
    }


@pytest.fixture(scope="module")
def broker():
    if not mqtt_broker.available():
        pytest.skip("mosquitto is not installed")
    with mqtt_broker.Broker() as running:
        yield running


@pytest.fixture
def serve(tmp_path):
    """serve(ROOT, *directives) -> a started nginx serving ROOT; all stopped at teardown."""
    if not nginx.available():
        pytest.skip("nginx is not installed (apt-get install nginx; scripts/bootstrap.sh --test does)")
    started = []

    def start(root: Path, *directives: str, tls: tuple[Path, Path] | None = None) -> nginx.Nginx:
        server = nginx.Nginx(root, tmp_path / f"nginx-{len(started)}", *directives, tls=tls).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def record(archive: Path, key, group: str = "lab", mirror_urls=(), chunk_size: int = CHUNK) -> dict:
    return releases.create(archive, [group], [key], 3600, chunk_size=chunk_size, mirrors=list(mirror_urls))


def laid_out(archive: Path, envelope: dict, root: Path) -> Path:
    """ROOT holding the archive in the mirror layout (what `fleet mirror sync` writes)."""
    folder = root.parent / f"src-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    shutil.copyfile(archive, folder / archive.name)
    releases.write(envelope, folder / f"{archive.name}{releases.SUFFIX}")
    mirrors.sync(root, [mirrors.from_release_file(folder / f"{archive.name}{releases.SUFFIX}")])
    return root


def tampered(archive: Path, sha256: str, root: Path, chunk: int) -> Path:
    """ROOT serving the archive under its real name with one byte flipped in `chunk`."""
    data = bytearray(archive.read_bytes())
    data[chunk * CHUNK + 7] ^= 0xFF
    root.mkdir(parents=True)
    (root / f"{sha256}.erb").write_bytes(bytes(data))
    return root


def connections(server: nginx.Nginx) -> set[str]:
    return {line.split()[0] for line in server.requests()}


# --- records ---------------------------------------------------------------------------------------


def test_mirrors_are_signed_optional_and_checked(archives, fleet_key):
    plain = record(archives["v2"], fleet_key)
    assert "mirrors" not in plain["signed"]  # a record without mirrors is what it always was
    trusted = {signing.key_id(fleet_key.public_key()): fleet_key.public_key()}
    assert releases.verify(plain, trusted, group="lab", installed_release=1).mirrors == []
    urls = ["https://cdn.example.com/fleet", "http://10.0.0.5:8080/"]
    with_mirrors = record(archives["v2"], fleet_key, mirror_urls=urls)
    release = releases.verify(with_mirrors, trusted, group="lab", installed_release=1)
    assert release.mirrors == urls
    assert releases.mirror_url(urls[1], release.sha256) == f"http://10.0.0.5:8080/{release.sha256}.erb"
    edited = json.loads(json.dumps(with_mirrors))
    edited["signed"]["mirrors"] = ["http://attacker.example"]
    with pytest.raises(ReleaseError, match="signature"):
        releases.verify(edited, trusted, group="lab", installed_release=1)
    for bad, reason in [
        ("ftp://host/x", "http:// or https://"),
        ("http://user:pw@host/", "credentials"),
        ("http://host/?a=1", "query"),
        ("http:///path", "with a host"),
        ("http://host:99999/", "mirror"),
        ("http://hôst/", "ASCII"),
    ]:
        with pytest.raises(ReleaseError, match=reason):
            record(archives["v2"], fleet_key, mirror_urls=[bad])
    malformed = json.loads(json.dumps(plain["signed"]))
    malformed["mirrors"] = "http://host/"
    with pytest.raises(ReleaseError, match="malformed"):
        releases.check_shape(malformed)


# --- the device's range-request fetch, against nginx -------------------------------------------------


def test_range_requests_fill_only_the_missing_chunks_over_one_connection(archives, fleet_key, serve, tmp_path):
    envelope = record(archives["v2"], fleet_key)
    target = releases.check_shape(envelope["signed"])
    server = serve(laid_out(archives["v2"], envelope, tmp_path / "mirror"))
    download = Download(tmp_path / "dl", target).open()
    for index in (0, 1, 5):  # an interrupted earlier attempt
        download.write(index, read_chunk(archives["v2"], CHUNK, index))
    missing = len(download.missing())
    counters = fetch_from_mirrors(download, [server.url], FAST)
    assert counters == {
        "mirror_chunks": missing,
        "mirror_bytes": target.size - 3 * CHUNK,
        "mirror_bad": 0,
        "mirror_errors": 0,
    }
    assert download.finish().read_bytes() == archives["v2"].read_bytes()
    lines = server.requests()
    assert lines and all(" 206 GET " in line for line in lines), lines
    assert 'range="bytes=65536-163839"' in lines[0]  # chunks 2..4, the first run the bitmap lacks
    assert len(connections(server)) == 1  # keep-alive


def test_a_range_less_server_is_streamed_once_and_cut_into_verified_chunks(archives, fleet_key, serve, tmp_path):
    envelope = record(archives["v2"], fleet_key)
    target = releases.check_shape(envelope["signed"])
    server = serve(laid_out(archives["v2"], envelope, tmp_path / "mirror"), "max_ranges 0;")
    download = Download(tmp_path / "dl", target).open()
    for index in (0, 3):
        download.write(index, read_chunk(archives["v2"], CHUNK, index))
    counters = fetch_from_mirrors(download, [server.url], FAST)
    assert counters["mirror_chunks"] == target.signed["archive"]["size"] // CHUNK + 1 - 2
    assert counters["mirror_errors"] == counters["mirror_bad"] == 0
    assert download.finish().read_bytes() == archives["v2"].read_bytes()
    assert len(server.requests()) == 1 and " 200 GET " in server.requests()[0]


def test_unusable_mirrors_are_passed_over_in_order(archives, fleet_key, serve, tmp_path):
    """A URL of another scheme, nothing listening, the file absent (404), a shorter file (the answer
    describes another range), a tampered copy: each counted, none writes a byte, the last mirror serves."""
    envelope = record(archives["v2"], fleet_key)
    target = releases.check_shape(envelope["signed"])
    (tmp_path / "empty").mkdir()
    empty = serve(tmp_path / "empty")
    short_root = tmp_path / "short"
    short_root.mkdir()
    (short_root / f"{target.sha256}.erb").write_bytes(archives["v2"].read_bytes()[: 3 * CHUNK])
    short = serve(short_root)
    evil = serve(tampered(archives["v2"], target.sha256, tmp_path / "evil", chunk=0))
    good = serve(laid_out(archives["v2"], envelope, tmp_path / "good"))
    download = Download(tmp_path / "dl", target).open()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens
    counters = fetch_from_mirrors(download, ["ftp://x/", dead, empty.url, short.url, evil.url, good.url], FAST)
    assert counters["mirror_errors"] == 5 and counters["mirror_bad"] == 1
    assert counters["mirror_chunks"] == download.total and counters["mirror_bytes"] == target.size
    assert [line.split()[1] for line in empty.requests()] == ["404"]
    assert len(good.requests()) >= 1
    assert download.finish().read_bytes() == archives["v2"].read_bytes()


class Trickling(http.server.BaseHTTPRequestHandler):
    """A hostile mirror: a 206 whose headers come one every 0.2 s, each well within the socket timeout."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(206)
        try:
            for number in range(200):
                self.send_header(f"X-Slow-{number}", "x")
                self.flush_headers()
                time.sleep(0.2)
        except OSError:
            pass  # the device hung up

    def log_message(self, *args):
        pass


def test_a_mirror_that_trickles_is_cut_off_at_its_deadline(archives, fleet_key, serve, tmp_path):
    envelope = record(archives["v2"], fleet_key)
    target = releases.check_shape(envelope["signed"])
    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickling)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    good = serve(laid_out(archives["v2"], envelope, tmp_path / "good"))
    download = Download(tmp_path / "dl", target).open()
    config = MirrorConfig(timeout_s=0.5, min_rate=1024 * 1024)  # 0.5 s + 1.4 s for the first request
    started = time.monotonic()
    try:
        counters = fetch_from_mirrors(download, [f"http://127.0.0.1:{slow.server_port}", good.url], config)
    finally:
        slow.shutdown()
        slow.server_close()
    assert counters["mirror_errors"] == 1 and counters["mirror_chunks"] == download.total
    assert time.monotonic() - started < 6  # not the 40 s the headers would take
    assert download.finish().read_bytes() == archives["v2"].read_bytes()


# --- the agent, as a real process --------------------------------------------------------------------


@pytest.fixture
def group():
    return f"g{uuid.uuid4().hex[:8]}"


@pytest.fixture
def device(tmp_path, broker, fleet_key, archives, group):
    made = []

    def factory(pause=None, args=()):
        dev = Device(
            tmp_path / "devices",
            f"dev-{uuid.uuid4().hex[:6]}",
            group,
            broker.url,
            fleet_key.public_key(),
            archives["v1"],
            *args,
            fleet_dir=tmp_path / "fleet",  # enrolled: the fleet manager serves chunks to enrolled devices only
        )
        made.append(dev)
        return dev.start(pause)

    yield factory
    for dev in made:
        dev.stop()


def publish_desired(broker_url: str, key, group: str, envelope: dict | None, action: str = "install", seq: int = 1):
    desired = protocol.build_desired([key], scope="group", target=group, seq=seq, action=action, release=envelope)
    link = Link(BrokerConfig.from_url(broker_url), f"pub-{uuid.uuid4().hex[:6]}", clean_start=True, session_expiry_s=0)
    link.start()
    link.wait_ready(10)
    try:
        link.client.publish(
            protocol.group_desired_topic(group), protocol.encode(desired), qos=1, retain=True
        ).wait_for_publish(10)
    finally:
        link.stop()


def wait_for_chunks(dev: Device, sha256: str, count: int, timeout: float = 30.0) -> Path:
    """Until the device's download bitmap records `count` chunks; its path."""
    bitmap = dev.home / "state" / "fleet" / "downloads" / f"{sha256}.json"
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, dev.log.read_text()[-2000:]
        try:
            if len(json.loads(bitmap.read_text())["done"]) >= count:
                return bitmap
        except (OSError, ValueError):
            pass
        time.sleep(0.02)


def committed(dev: Device) -> dict:
    final = dev.wait_phase("committed", "failed", "rolled_back", timeout=60)
    assert final["phase"] == "committed", final
    assert dev.store.active() == ("tiny", "1.1.0")
    return final["download"]


def test_an_agent_installs_from_a_mirror_and_no_chunk_crosses_the_broker(
    device, broker, archives, fleet_key, group, serve, tmp_path
):
    dev = device()
    traffic = BrokerTraffic(broker.url)
    served = ServedManager(broker.url, tmp_path / "fleet", [fleet_key])  # there to answer, never asked
    try:
        probe = record(archives["v2"], fleet_key, group)
        server = serve(laid_out(archives["v2"], probe, tmp_path / "mirror"))
        envelope = record(archives["v2"], fleet_key, group, [server.url], chunk_size=128 * 1024)
        served.manager.fleet.add_release(envelope, releases.check_shape(envelope["signed"]), archives["v2"])
        publish_desired(broker.url, fleet_key, group, envelope)
        counts = committed(dev)
        time.sleep(0.3)  # the last report reaches the traffic counter
    finally:
        served.close()
        traffic.close()
    size = archives["v2"].stat().st_size
    assert counts["mirror_bytes"] == size and counts["mirror_chunks"] == counts["chunks"]
    assert counts["received"] == counts["requested"] == counts["mqtt_bytes"] == 0
    assert served.manager.chunks_served == 0
    assert traffic.chunk_bytes() == 0, traffic.bytes
    # Only control messages crossed the broker: the desired state (the release record) and the reports.
    total = traffic.total()
    print(f"broker payload bytes {total} for a {size}-byte archive ({100 * total / size:.2f} %)")
    assert total < 0.05 * size, traffic.bytes


def test_a_tampered_mirror_first_in_the_list_is_refused_and_the_second_serves(
    device, broker, archives, fleet_key, group, serve, tmp_path
):
    dev = device()
    probe = record(archives["v2"], fleet_key, group)
    sha256 = probe["signed"]["archive"]["sha256"]
    evil = serve(tampered(archives["v2"], sha256, tmp_path / "evil", chunk=2))
    good = serve(laid_out(archives["v2"], probe, tmp_path / "good"))
    publish_desired(broker.url, fleet_key, group, record(archives["v2"], fleet_key, group, [evil.url, good.url]))
    counts = committed(dev)  # no fleet manager runs: nothing could come over MQTT
    assert counts["mirror_bad"] == 1 and counts["mirror_errors"] == 1
    assert counts["mirror_chunks"] == counts["chunks"] and counts["received"] == 0
    assert evil.requests() and good.requests()
    assert not list((dev.home / "state" / "fleet" / "downloads").iterdir())


def test_a_mirror_killed_mid_download_leaves_the_rest_to_mqtt(
    device, broker, archives, fleet_key, group, serve, tmp_path
):
    dev = device()
    served = ServedManager(broker.url, tmp_path / "fleet", [fleet_key])
    try:
        probe = record(archives["v2"], fleet_key, group)
        sha256 = probe["signed"]["archive"]["sha256"]
        server = serve(laid_out(archives["v2"], probe, tmp_path / "mirror"), "limit_rate 96k;")
        envelope = record(archives["v2"], fleet_key, group, [server.url])
        served.manager.fleet.add_release(envelope, releases.check_shape(envelope["signed"]), archives["v2"])
        publish_desired(broker.url, fleet_key, group, envelope)
        wait_for_chunks(dev, sha256, 3)
        server.kill()
        counts = committed(dev)
    finally:
        served.close()
    assert counts["mirror_chunks"] >= 3 and counts["mirror_errors"] == 1
    assert counts["received"] >= 1 and counts["mirror_chunks"] + counts["received"] == counts["chunks"]
    assert served.manager.bytes_served == counts["mqtt_bytes"] < archives["v2"].stat().st_size


def test_an_agent_killed_mid_download_resumes_from_its_bitmap_on_the_mirror(
    device, broker, archives, fleet_key, group, serve, tmp_path
):
    marker = tmp_path / "paused"
    dev = device(pause=("chunk", marker))  # stops right after the first stored chunk
    probe = record(archives["v2"], fleet_key, group)
    server = serve(laid_out(archives["v2"], probe, tmp_path / "mirror"))
    publish_desired(broker.url, fleet_key, group, record(archives["v2"], fleet_key, group, [server.url]))
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert dev.process.poll() is None and time.monotonic() < deadline, dev.log.read_text()[-2000:]
        time.sleep(0.05)
    dev.kill()
    dev.start()
    counts = committed(dev)
    assert counts["resumed"] >= 1 and counts["mirror_chunks"] == counts["chunks"] - counts["resumed"]
    assert counts["received"] == 0


def test_a_halt_stops_a_download_from_a_mirror(device, broker, archives, fleet_key, group, serve, tmp_path):
    """The agent acts on its messages between mirror chunks as between MQTT ones."""
    dev = device()
    probe = record(archives["v2"], fleet_key, group)
    sha256 = probe["signed"]["archive"]["sha256"]
    server = serve(laid_out(archives["v2"], probe, tmp_path / "mirror"), "limit_rate 32k;")  # 30 s for all of it
    publish_desired(broker.url, fleet_key, group, record(archives["v2"], fleet_key, group, [server.url]))
    bitmap = wait_for_chunks(dev, sha256, 1)
    publish_desired(broker.url, fleet_key, group, None, action="halt", seq=2)
    final = dev.wait(lambda d: d["phase"] == "idle" and "halted" in (d["note"] or ""), 15, "the halt")
    assert final["installed_release"] == 1 and dev.store.active() == ("tiny", "1.0.0")
    assert not bitmap.exists()  # the partial download was removed


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_release_create_with_mirrors_then_mirror_sync(archives, fleet_key, serve, tmp_path, capsys):
    key_file = tmp_path / "fleet.key"
    signing.save_private_key(key_file, fleet_key)
    work = tmp_path / "work"
    work.mkdir()
    archive = work / archives["v2"].name
    shutil.copyfile(archives["v2"], archive)
    out = work / f"{archive.name}{releases.SUFFIX}"
    base = [
        "fleet",
        "release",
        "create",
        str(archive),
        "--group",
        "lab",
        "--key",
        str(key_file),
        "--chunk-size",
        str(CHUNK),
    ]
    assert (
        main([*base, "--mirror", "http://m1.example/fleet", "--mirror", "https://m2.example", "--out", str(out)]) == 0
    )
    signed = json.loads(out.read_text())["signed"]
    assert signed["mirrors"] == ["http://m1.example/fleet", "https://m2.example"]
    assert f"mirror http://m1.example/fleet/{signed['archive']['sha256']}.erb" in capsys.readouterr().out
    assert main([*base, "--mirror", "ftp://m1.example", "--out", str(work / "x.json")]) == 1
    assert "must be an http:// or https:// URL" in capsys.readouterr().err and not (work / "x.json").exists()

    mirror_dir = tmp_path / "www"
    assert main(["fleet", "mirror", "sync", str(mirror_dir), str(out), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)["archives"]
    sha256 = signed["archive"]["sha256"]
    assert [(a["sha256"], a["action"], a["release"]) for a in first] == [(sha256, "linked", 2)]
    assert sorted(p.name for p in mirror_dir.iterdir()) == [f"{sha256}.erb", f"{sha256}.release.json"]
    assert main(["fleet", "mirror", "sync", str(mirror_dir), str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["archives"][0]["action"] == "unchanged"
    stored = mirror_dir / f"{sha256}.erb"
    stored.unlink()
    stored.write_bytes(b"not the archive")  # a damaged mirror copy is put right
    assert main(["fleet", "mirror", "sync", str(mirror_dir), str(out)]) == 0
    assert "replaced" in capsys.readouterr().out and stored.read_bytes() == archive.read_bytes()

    fleet = FleetDir(tmp_path / "fleet")  # every published release, when no RELEASE_FILE is named
    fleet.add_release(json.loads(out.read_text()), releases.check_shape(signed), archive)
    assert main(["fleet", "mirror", "sync", str(tmp_path / "www2"), "--fleet-dir", str(fleet.root)]) == 0
    assert f"linked    {sha256}.erb tiny@1.1.0 (release 2)" in capsys.readouterr().out

    assert main(["fleet", "mirror", "sync", str(tmp_path / "www3"), "--fleet-dir", str(tmp_path / "none")]) == 1
    assert "no releases to sync" in capsys.readouterr().err
    assert main(["fleet", "mirror", "sync", str(out), str(out)]) == 2  # DIRECTORY is a file
    (work / "junk.release.json").write_text("{")
    assert main(["fleet", "mirror", "sync", str(mirror_dir), str(work / "junk.release.json")]) == 1
    assert "not a JSON release record" in capsys.readouterr().err

    # What sync laid out is what a device asks a mirror for.
    server = serve(mirror_dir)
    download = Download(tmp_path / "dl", releases.check_shape(signed)).open()
    assert fetch_from_mirrors(download, [server.url], FAST)["mirror_chunks"] == download.total
    assert download.finish().read_bytes() == archive.read_bytes()


# --- HTTPS mirrors and private mirrors -------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool, names=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
        + ("encipher_only", "decipher_only"),
        False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, **usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    """Two CAs (the device's private one, and another) and nginx certificates: `good` (the device's CA, for
    127.0.0.1), `untrusted` (the other CA, for 127.0.0.1), `wrong_host` (the device's CA, for mirror.example)."""
    out = tmp_path_factory.mktemp("pki")

    def pem(path: Path, data: bytes) -> Path:
        path.write_bytes(data)
        return path

    made = {}
    cas = {}
    for name in ("ca", "other_ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"edge-runtime test {name}", key, f"edge-runtime test {name}", key, ca=True)
        cas[name] = (key, cert)
        made[name] = pem(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    for name, ca, host in [
        ("good", "ca", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("untrusted", "other_ca", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("wrong_host", "ca", x509.DNSName("mirror.example")),
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        ca_key, ca_cert = cas[ca]
        cert = _certificate(name, key, f"edge-runtime test {ca}", ca_key, ca=False, names=[host])
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        made[name] = (
            pem(out / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)),
            pem(out / f"{name}.key", private),
        )
    return made


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge_runtime.fleet.http_fetch"]


def test_an_https_mirror_is_used_only_when_its_certificate_verifies(archives, fleet_key, serve, tmp_path, pki, caplog):
    """Verification is on by default (the system store does not know the private CA), a mirror CA file makes
    the private PKI's mirror usable, and a certificate of another CA or for another host is passed over before
    a single request is sent, with its reason on one line."""
    envelope = record(archives["v2"], fleet_key)
    target = releases.check_shape(envelope["signed"])
    root = laid_out(archives["v2"], envelope, tmp_path / "mirror")
    good = serve(root, tls=pki["good"])
    untrusted = serve(root, tls=pki["untrusted"])
    wrong_host = serve(root, tls=pki["wrong_host"])
    trusting = MirrorConfig(timeout_s=3.0, access=MirrorAccess(ca_file=str(pki["ca"])))
    for number, (server, config, reason) in enumerate(
        [
            (good, FAST, "unable to get local issuer certificate"),  # the system store only
            (untrusted, trusting, "unable to get local issuer certificate"),
            (wrong_host, trusting, "mismatch, certificate is not valid for '127.0.0.1'"),
        ]
    ):
        download = Download(tmp_path / f"dl-{number}", target).open()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            counters = fetch_from_mirrors(download, [server.url], config)
        assert counters == {"mirror_chunks": 0, "mirror_bytes": 0, "mirror_bad": 0, "mirror_errors": 1}
        assert len(download.missing()) == download.total
        [warning] = warnings_of(caplog)
        assert "TLS certificate not trusted" in warning and reason in warning and "\n" not in warning, warning
    assert good.requests() == untrusted.requests() == wrong_host.requests() == []  # not one request sent

    download = Download(tmp_path / "dl", target).open()
    counters = fetch_from_mirrors(download, [untrusted.url, wrong_host.url, good.url], trusting)
    assert counters["mirror_errors"] == 2 and counters["mirror_chunks"] == download.total
    assert download.finish().read_bytes() == archives["v2"].read_bytes()
    assert good.requests() and all(" 206 GET " in line for line in good.requests())


def test_credentials_go_to_their_origin_only_and_a_refusal_passes_the_mirror_over(
    archives, fleet_key, serve, tmp_path, caplog
):
    envelope = record(archives["v2"], fleet_key)
    target = releases.check_shape(envelope["signed"])
    root = laid_out(archives["v2"], envelope, tmp_path / "mirror")
    private = serve(root, 'if ($http_authorization != "Bearer s3cret-T0ken") { return 401; }')
    (tmp_path / "empty").mkdir()
    other = serve(tmp_path / "empty")  # another origin: asked (404), never with the header
    redirecting = serve(tmp_path / "empty", f"return 302 {other.url}$request_uri;")
    token = secret_file(tmp_path / "mirror.cred", "s3cret-T0ken\n")
    wrong = secret_file(tmp_path / "wrong.cred", "not-the-token\n")

    def config(credentials: dict) -> MirrorConfig:
        return MirrorConfig(timeout_s=3.0, access=MirrorAccess(credentials=credentials))

    with_token = config({origin(private.url): token, origin(redirecting.url): token})
    download = Download(tmp_path / "dl", target).open()
    counters = fetch_from_mirrors(download, [redirecting.url, other.url, private.url], with_token)
    assert counters["mirror_errors"] == 2 and counters["mirror_chunks"] == download.total
    assert download.finish().read_bytes() == archives["v2"].read_bytes()
    assert private.requests() and all(
        " 206 GET " in line and line.endswith('auth="Bearer s3cret-T0ken"') for line in private.requests()
    )
    [redirect] = redirecting.requests()
    assert " 302 GET " in redirect and redirect.endswith('auth="Bearer s3cret-T0ken"')
    # The redirect was not followed; the other origin was asked once, as a mirror of its own, without it.
    assert [line.split()[1] for line in other.requests()] == ["404"]
    assert other.requests()[0].endswith('auth="-"') and "s3cret" not in other.access_log.read_text()

    for name, mirror_config, reason in [
        ("none", FAST, "(no credentials for it)"),
        ("wrong", config({origin(private.url): wrong}), "(refused the device's credentials)"),
    ]:
        download = Download(tmp_path / f"dl-{name}", target).open()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            counters = fetch_from_mirrors(download, [private.url], mirror_config)
        assert counters["mirror_errors"] == 1 and counters["mirror_chunks"] == 0
        assert len(download.missing()) == download.total
        [warning] = warnings_of(caplog)
        assert "HTTP 401 Unauthorized" in warning and reason in warning and "\n" not in warning, warning
    assert "not-the-token" in private.requests()[-1] and private.requests()[-1].split()[1] == "401"


def test_basic_credentials_and_a_credentials_file_others_may_read(archives, fleet_key, serve, tmp_path, caplog):
    envelope = record(archives["v2"], fleet_key)
    target = releases.check_shape(envelope["signed"])
    root = laid_out(archives["v2"], envelope, tmp_path / "mirror")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("fleet:{PLAIN}n0t-public\n")
    server = serve(root, 'auth_basic "fleet";', f"auth_basic_user_file {htpasswd};")
    cred = secret_file(tmp_path / "basic.cred", "fleet:n0t-public\n", 0o644)
    settings = tmp_path / "config.toml"
    settings.write_text(f'[update]\nmirror_credentials = ["{server.url}={cred}"]\n')

    # Refused at start-up, as ssh refuses a private key others can read ...
    with pytest.raises(
        ConfigError, match=r"^config.toml: update.mirror_credentials: credentials file .*basic.cred: permissions 0644"
    ):
        configuration.load(settings, environ={})
    # ... and when it became readable since: the mirror is passed over, never asked without its credentials.
    access = MirrorAccess(credentials={origin(server.url): cred})
    download = Download(tmp_path / "dl-open", target).open()
    with caplog.at_level(logging.WARNING):
        counters = fetch_from_mirrors(download, [server.url], MirrorConfig(timeout_s=3.0, access=access))
    assert counters["mirror_errors"] == 1 and counters["mirror_chunks"] == 0 and server.requests() == []
    assert any("too open" in warning and "chmod 600" in warning for warning in warnings_of(caplog))

    cred.chmod(0o600)
    values = configuration.load(settings, environ={})
    access = MirrorAccess.from_config(values)
    assert access.credentials == {f"http://127.0.0.1:{server.port}": cred}
    download = Download(tmp_path / "dl", target).open()
    counters = fetch_from_mirrors(download, [server.url], MirrorConfig(timeout_s=3.0, access=access))
    assert counters["mirror_errors"] == 0 and counters["mirror_chunks"] == download.total
    assert download.finish().read_bytes() == archives["v2"].read_bytes()
    assert all(" 206 GET " in line and 'auth="Basic ' in line for line in server.requests())


def test_mirror_access_settings_are_checked_with_a_one_line_reason(tmp_path, pki):
    assert origin("HTTPS://Mirror.LAN/fleet") == "https://mirror.lan:443"
    assert origin("http://[::1]:8080/x") == "http://[::1]:8080"
    token = secret_file(tmp_path / "token", "abc.DEF-123~+/=\n")
    assert MirrorAccess(credentials={"https://m:443": token}).authorization("https://M/fleet/x.erb") == (
        "Bearer abc.DEF-123~+/="
    )
    assert MirrorAccess(credentials={"https://m:443": token}).authorization("https://m:8443/x.erb") is None
    for text, reason in [
        ("two\nlines\n", "must hold one line"),
        ("", "must hold one line"),
        ("to ken\n", "a bearer token is"),
        (":password\n", "empty user"),
    ]:
        with pytest.raises(MirrorAccessError, match=reason):
            MirrorAccess(credentials={"https://m:443": secret_file(tmp_path / "bad", text)}).check()
    settings = tmp_path / "config.toml"
    for update, reason in [
        ('mirror_credentials = ["https://m.example"]', "mirror_credentials: .*must be ORIGIN=FILE"),
        (f'mirror_credentials = ["https://m.example/fleet={token}"]', "mirror_credentials: .*without a path"),
        (f'mirror_credentials = ["ftp://m.example={token}"]', "mirror_credentials: .*origin must be http"),
        (
            f'mirror_credentials = ["https://m.example={token}", "https://M.example:443={token}"]',
            "mirror_credentials: https://m.example:443 is named twice",
        ),
        (f'mirror_credentials = ["https://m.example={tmp_path / "none"}"]', "mirror_credentials: .*none: cannot"),
        (f'mirror_ca_file = "{tmp_path / "none"}"', "mirror_ca_file: .*none: not a PEM CA file"),
        (f'mirror_ca_file = "{token}"', "mirror_ca_file: .*token: not a PEM CA file"),
    ]:
        settings.write_text(f"[update]\n{update}\n")
        with pytest.raises(ConfigError, match=f"^config.toml: update.{reason}") as error:
            configuration.load(settings, environ={})
        assert "\n" not in str(error.value)
    settings.write_text(f'[update]\nmirror_ca_file = "{pki["ca"]}"\n')
    assert MirrorAccess.from_config(configuration.load(settings, environ={})).ca_file == str(pki["ca"])


def device_config(path: Path, **update) -> tuple[str, str]:
    """`update run` arguments: --config PATH, a config holding these [update] settings."""
    path.write_text(configuration.to_toml({"update": update}))
    return "--config", str(path)


def test_agents_take_an_https_mirror_they_trust_and_pass_over_one_they_do_not(
    device, broker, archives, fleet_key, group, serve, tmp_path, pki
):
    trusting = device(args=device_config(tmp_path / "trusting.toml", mirror_ca_file=str(pki["ca"])))
    other = device(args=device_config(tmp_path / "other.toml", mirror_ca_file=str(pki["other_ca"])))
    served = ServedManager(broker.url, tmp_path / "fleet", [fleet_key])
    try:
        probe = record(archives["v2"], fleet_key, group)
        server = serve(laid_out(archives["v2"], probe, tmp_path / "mirror"), tls=pki["good"])
        envelope = record(archives["v2"], fleet_key, group, [server.url])
        served.manager.fleet.add_release(envelope, releases.check_shape(envelope["signed"]), archives["v2"])
        publish_desired(broker.url, fleet_key, group, envelope)
        trusted_counts, other_counts = committed(trusting), committed(other)
    finally:
        served.close()
    size = archives["v2"].stat().st_size
    assert trusted_counts["mirror_bytes"] == size and trusted_counts["mirror_errors"] == 0
    assert trusted_counts["received"] == trusted_counts["mqtt_bytes"] == 0
    assert other_counts["mirror_chunks"] == 0 and other_counts["mirror_errors"] == 1
    assert other_counts["received"] == other_counts["chunks"] and other_counts["mqtt_bytes"] == size
    assert served.manager.bytes_served == size  # the second device's archive, and nothing for the first
    assert "TLS certificate not trusted" in other.log.read_text()
    assert all(" 206 GET " in line for line in server.requests())


def test_agents_send_credentials_from_their_config_to_that_mirror_only(
    device, broker, archives, fleet_key, group, serve, tmp_path
):
    token = secret_file(tmp_path / "cdn.cred", "fleet-T0ken\n")
    probe = record(archives["v2"], fleet_key, group)
    private = serve(
        laid_out(archives["v2"], probe, tmp_path / "mirror"),
        'if ($http_authorization != "Bearer fleet-T0ken") { return 403; }',
    )
    (tmp_path / "empty").mkdir()
    other = serve(tmp_path / "empty")  # first in the record, on another origin: 404 for everyone
    holder = device(args=device_config(tmp_path / "holder.toml", mirror_credentials=[f"{private.url}={token}"]))
    without = device()
    served = ServedManager(broker.url, tmp_path / "fleet", [fleet_key])
    try:
        envelope = record(archives["v2"], fleet_key, group, [other.url, private.url])
        served.manager.fleet.add_release(envelope, releases.check_shape(envelope["signed"]), archives["v2"])
        publish_desired(broker.url, fleet_key, group, envelope)
        holder_counts, without_counts = committed(holder), committed(without)
    finally:
        served.close()
    assert holder_counts["mirror_chunks"] == holder_counts["chunks"] and holder_counts["received"] == 0
    assert holder_counts["mirror_errors"] == 1  # the other mirror's 404
    assert without_counts["mirror_errors"] == 2 and without_counts["received"] == without_counts["chunks"]
    assert "HTTP 403 Forbidden (no credentials for it)" in without.log.read_text()
    statuses = [(line.split()[1], line.endswith('auth="Bearer fleet-T0ken"')) for line in private.requests()]
    assert set(statuses) == {("206", True), ("403", False)}, statuses
    assert len(other.requests()) == 2 and all(line.endswith('auth="-"') for line in other.requests())
