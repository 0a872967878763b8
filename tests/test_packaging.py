"""The package as a user gets it. `python -m build` makes an sdist and a wheel from the repository's files;
the wheel, installed alone (no extras) into a fresh virtualenv, pulls in no training stack and runs predict,
serve (one /v1/predict request), status, redact, doctor and models on a real signed bundle; the sdist,
installed into another fresh virtualenv, compiles the Cython core.

The installed commands run from a temporary directory with PYTHONPATH removed, so the repository's
source tree is never what they import.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import edge_runtime

from support import REPO, free_port

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pytestmark = [pytest.mark.slow, pytest.mark.packaging]

TRAINING_MODULES = ("torch", "transformers", "optimum", "sklearn", "onnx")
TEXT = "what is my checking account balance"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_extra_distributions() -> set[str]:
    """The distribution names of the [build] extra, as pyproject.toml lists them."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {normalized(re.match(r"[A-Za-z0-9._-]+", spec).group()) for spec in extras["build"]}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would point a child at the source tree or this venv."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "EDGE_RUNTIME_PURE_PYTHON", "EDGE_RUNTIME_HOME")
    return {**{k: v for k, v in os.environ.items() if k not in dropped}, **extra}


def run(*args, cwd: Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", clean_env())
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def fresh_venv(where: Path) -> Path:
    run(sys.executable, "-m", "venv", where, cwd=where.parent)
    return where / "bin"


def site_packages(bin_dir: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(run(bin_dir / "python", "-c", code, cwd=bin_dir).stdout.strip())


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """sdist and wheel built from a copy of the files a checkout holds (tracked, or new and not ignored)."""
    source = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file():  # a tracked file someone deleted in the working tree is not part of it
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, source / rel)
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, source, cwd=source)
    (sdist,) = out.glob("edge_runtime-*.tar.gz")
    (wheel,) = out.glob("edge_runtime-*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def runtime_bin(dists, tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the wheel and its runtime dependencies only."""
    bin_dir = fresh_venv(tmp_path_factory.mktemp("runtime") / "venv")
    run(bin_dir / "python", "-m", "pip", "install", dists["wheel"], cwd=bin_dir)
    return bin_dir


def test_runtime_install_has_no_training_stack(runtime_bin):
    listed = run(runtime_bin / "python", "-m", "pip", "list", "--format=json", cwd=runtime_bin).stdout
    installed = {normalized(row["name"]): row["version"] for row in json.loads(listed)}
    assert installed["edge-runtime"] == edge_runtime.__version__
    assert not build_extra_distributions() & set(installed), sorted(build_extra_distributions() & set(installed))
    code = f"import importlib.util as u; print([m for m in {TRAINING_MODULES!r} if u.find_spec(m)])"
    assert run(runtime_bin / "python", "-c", code, cwd=runtime_bin).stdout.strip() == "[]"
    size_mb = int(run("du", "-sk", site_packages(runtime_bin), cwd=runtime_bin).stdout.split()[0]) / 1024
    print(f"\nruntime install: site-packages {size_mb:.0f} MB")


def request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, json.dumps(body) if body else None, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_ready(port: int, daemon: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            if request(port, "GET", "/v2/health/ready")[0] == 200:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"daemon not ready (exit code {daemon.poll()}):\n{log.read_text(errors='replace')}")


def test_installed_commands_run_on_a_signed_bundle(runtime_bin, home, small_bundle, tmp_path):
    cli = runtime_bin / "edge-runtime"
    env = clean_env(EDGE_RUNTIME_HOME=str(home))
    imported = run(runtime_bin / "python", "-c", "import edge_runtime as e; print(e.__file__)", cwd=tmp_path, env=env)
    assert Path(imported.stdout.strip()).is_relative_to(site_packages(runtime_bin))
    assert run(cli, "--version", cwd=tmp_path, env=env).stdout.split()[-1] == edge_runtime.__version__

    report = json.loads(run(cli, "doctor", "--json", cwd=tmp_path, env=env).stdout)
    assert report["kernels"] == "cython"
    assert report["active_model"] == "clinc-small@0.1.0" and report["store"]["ok"]
    listed = json.loads(run(cli, "models", "list", "--json", cwd=tmp_path, env=env).stdout)
    assert listed["active"] == {"name": "clinc-small", "version": "0.1.0"}, listed
    assert json.loads(run(cli, "models", "verify", "--json", cwd=tmp_path, env=env).stdout)["ok"]

    labels = json.loads((small_bundle / "labels.json").read_text())
    prediction = json.loads(run(cli, "predict", "--json", TEXT, cwd=tmp_path, env=env).stdout)
    assert prediction["text"] == TEXT and prediction["label"] in labels

    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        run(cli, "predict", TEXT, cwd=tmp_path, env=env)
        seconds.append(time.perf_counter() - started)
    print(f"\ncold `edge-runtime predict` (fresh process, median of 3): {statistics.median(seconds) * 1000:.0f} ms")

    redacted = run(cli, "redact", cwd=tmp_path, env=env, input="mail jane@example.com or call +33 1 83 41 77 76\n")
    assert redacted.stdout == "mail <EMAIL_1> or call <PHONE_1>\n"

    port, log_path = free_port(), tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [cli, "serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(port, daemon, log_path)
        status, body = request(port, "POST", "/v1/predict", {"text": TEXT})
        assert status == 200, body
        assert body["model"] == "clinc-small" and body["label"] == prediction["label"]
        daemon_status = json.loads(
            run(cli, "status", "--url", f"http://127.0.0.1:{port}", "--json", cwd=tmp_path, env=env).stdout
        )
        assert daemon_status["pid"] == daemon.pid and daemon_status["kernels"] == "cython"
        assert daemon_status["version"] == edge_runtime.__version__
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            exit_code = daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            raise
    assert exit_code == 0, log_path.read_text(errors="replace")


def test_sdist_holds_the_cython_sources_and_installing_it_compiles_them(dists, runtime_bin, tmp_path):
    with tarfile.open(dists["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    pyx = {f"kernels/{path.name}" for path in (REPO / "kernels").glob("*.pyx")}
    assert pyx and pyx <= names
    assert {"setup.py", "pyproject.toml", "README.md", "MANIFEST.in"} <= names
    unwanted = ("datasets/", "models/", "tests/", ".venv/", "build/", "dist/", ".pytest_cache/", ".hypothesis/")
    assert not [n for n in names if n.startswith(unwanted) or n.endswith((".so", ".c", ".pyc"))]

    # Over the wheel in the runtime venv (runs last in this file): its dependencies are there already, and
    # a venv of its own cost a minute of CI. Build isolation still compiles the kernels from the sdist.
    bin_dir = runtime_bin
    run(bin_dir / "python", "-m", "pip", "install", "--force-reinstall", "--no-deps", dists["sdist"], cwd=tmp_path)
    code = "import edge_runtime.kernels as k; print(k.IMPLEMENTATION, k.classify.__file__)"
    implementation, module_file = run(bin_dir / "python", "-c", code, cwd=tmp_path).stdout.split()
    assert implementation == "cython"
    assert Path(module_file).is_relative_to(site_packages(bin_dir)) and module_file.endswith(".so")
