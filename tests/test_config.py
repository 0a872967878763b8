"""The daemon's TOML configuration: defaults, file, environment and command-line layers, and
`edge-runtime config check|show` with messages that name the bad key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime import config
from edge_runtime.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def cli(*args, env=None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_RUNTIME_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=60,
    )


def test_defaults_apply_without_a_file():
    values = config.load(None, environ={})
    assert values["server"]["host"] == "127.0.0.1" and values["server"]["port"] == 8080
    assert values["batching"]["max_batch"] == 32 and values["uplink"]["broker"] == ""
    assert values.source == "defaults"


def test_the_example_config_is_valid_and_spells_out_the_defaults():
    values = config.load(EXAMPLE, environ={})
    assert dict(values) == config.defaults()


def test_file_then_environment_then_command_line(tmp_path):
    path = write(tmp_path, '[server]\nport = 9000\nhost = "0.0.0.0"\n[batching]\nmax_delay_ms = 1\n')
    values = config.load(path, environ={})
    assert values["server"]["port"] == 9000 and values["batching"]["max_delay_ms"] == 1.0
    assert isinstance(values["batching"]["max_delay_ms"], float)
    env = {
        "EDGE_RUNTIME_SERVER_PORT": "9100",
        "EDGE_RUNTIME_SERVER_ACCESS_LOG": "yes",
        "EDGE_RUNTIME_HOME": "/not/a/config/key",
    }
    values = config.load(path, environ=env)
    assert values["server"]["port"] == 9100 and values["server"]["access_log"] is True
    assert values["server"]["host"] == "0.0.0.0"
    values = config.load(path, cli={"server": {"port": 9200, "host": None}}, environ=env)
    assert values["server"]["port"] == 9200 and values["server"]["host"] == "0.0.0.0"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[server]\nport = 70000\n", "config.toml: server.port: must be an integer 1-65535"),
        ('[server]\nport = "80"\n', "config.toml: server.port: must be an integer 1-65535"),
        ("[server]\nport = 80.5\n", "config.toml: server.port: must be an integer 1-65535"),
        ("[server]\nprot = 80\n", "config.toml: server.prot: unknown key"),
        ("[sever]\nport = 80\n", "config.toml: [sever]: unknown section"),
        ("[server]\naccess_log = 1\n", "config.toml: server.access_log: must be true or false"),
        ("[batching]\nmax_delay_ms = -1\n", "config.toml: batching.max_delay_ms: must be a number 0-1000"),
        ("[batching]\nmax_delay_ms = nan\n", "config.toml: batching.max_delay_ms: must be a number"),
        ("[batching]\nmax_queue = 10\n", "config.toml: batching.max_queue: must be at least server.max_texts"),
        ('[logging]\nlevel = "loud"\n', "config.toml: logging.level: must be one of debug, info"),
        ('[uplink]\nbroker = "http://x"\n', "config.toml: uplink.broker: broker URL"),
        ('[uplink]\nbroker = "mqtts://x"\nca_file = "/no/such/ca.pem"\n', "config.toml: uplink.ca_file"),
        ('[uplink]\ndevice_id = "a/b"\n', "config.toml: uplink.device_id"),
        ("server = 3\n", "config.toml: server: must be a table"),
        ("[server\nport = 1\n", "config.toml: not valid TOML"),
        ('[server]\ntoken = "a"\ntoken_file = "/etc/passwd"\n', "config.toml: server: set token or token_file"),
        ('[server]\ntoken_file = "/no/such/token"\n', "config.toml: server.token_file: /no/such/token: cannot read"),
        ("[server]\nprotect_status = true\n", "config.toml: server.protect_status: needs server.token"),
        ("[server]\ntcp = false\n", "config.toml: server.tcp: false needs server.unix_socket"),
        ("[server]\nmax_connections = 0\n", "config.toml: server.max_connections: must be an integer 1-65536"),
    ],
)
def test_bad_files_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        config.load(write(tmp_path, text), environ={})
    assert str(error.value).startswith(message)


def test_earlier_environment_names_still_work_for_a_release_with_a_warning(caplog):
    old = {
        "EDGE_RUNTIME_BROKER": "mqtt://old:1883",
        "EDGE_RUNTIME_DEVICE_ID": "dev-old",
        "EDGE_RUNTIME_DEVICE_GROUP": "lab",
    }
    with caplog.at_level("WARNING", logger="edge_runtime.config"):
        values = config.load(None, environ=old)
    assert values["uplink"]["broker"] == "mqtt://old:1883" and values["uplink"]["device_id"] == "dev-old"
    assert values["update"]["group"] == "lab"
    assert "EDGE_RUNTIME_BROKER is deprecated" in caplog.text and "EDGE_RUNTIME_UPLINK_BROKER" in caplog.text
    # the one name of each setting wins over the old one
    values = config.load(None, environ={**old, "EDGE_RUNTIME_UPLINK_BROKER": "mqtt://new:1883"})
    assert values["uplink"]["broker"] == "mqtt://new:1883"


def test_one_device_id_rule_for_config_and_wire():
    from edge_runtime.errors import InputError
    from edge_runtime.escalation import check_device_id

    for bad in ("a/b", "x" * 129, "a+b"):
        with pytest.raises(InputError) as wire:
            check_device_id(bad)
        with pytest.raises(ConfigError) as configured:
            config.load(None, environ={"EDGE_RUNTIME_UPLINK_DEVICE_ID": bad})
        assert str(configured.value) == f"config: uplink.device_id: {wire.value}"


def test_tls_is_on_whenever_a_ca_or_client_certificate_is_given(tmp_path):
    from edge_runtime.mqtt import BrokerConfig

    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    assert BrokerConfig.from_settings({"broker": "mqtt://h:1883"}).tls is False
    assert BrokerConfig.from_settings({"broker": "mqtts://h"}).tls is True
    assert BrokerConfig.from_settings({"broker": "mqtts://h"}).port == 8883
    with_ca = BrokerConfig.from_settings({"broker": "mqtt://h:1883", "ca_file": str(ca)})
    assert with_ca.tls is True and with_ca.ca_file == str(ca) and with_ca.port == 1883
    assert BrokerConfig.from_settings({"broker": "mqtt://h", "cert_file": str(ca), "key_file": str(ca)}).tls is True


def test_bad_environment_values_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="environment: server.port: must be an integer 1-65535"):
        config.load(None, environ={"EDGE_RUNTIME_SERVER_PORT": "eighty"})
    with pytest.raises(ConfigError, match="environment: server.access_log: must be true or false"):
        config.load(None, environ={"EDGE_RUNTIME_SERVER_ACCESS_LOG": "maybe"})


def test_the_default_file_comes_from_the_environment_when_set(tmp_path):
    path = write(tmp_path, "[server]\nport = 9300\n")
    old = os.environ.get("EDGE_RUNTIME_CONFIG")
    os.environ["EDGE_RUNTIME_CONFIG"] = str(path)
    try:
        assert config.load(None, environ={})["server"]["port"] == 9300
    finally:
        if old is None:
            del os.environ["EDGE_RUNTIME_CONFIG"]
        else:
            os.environ["EDGE_RUNTIME_CONFIG"] = old


def test_config_check_cli(tmp_path):
    good = cli("config", "check", str(EXAMPLE))
    assert good.returncode == 0 and good.stdout.strip() == f"ok: {EXAMPLE}"
    done = cli("config", "check", str(write(tmp_path, "[server]\nport = 0\n")))
    assert done.returncode == 1
    assert done.stderr.strip() == "edge-runtime: config.toml: server.port: must be an integer 1-65535"
    missing = cli("config", "check", str(tmp_path / "missing.toml"))
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_config_show_merges_the_layers(tmp_path):
    path = write(tmp_path, "[server]\nport = 9400\n")
    done = cli("config", "show", "--config", str(path), "--json", env={"EDGE_RUNTIME_BATCHING_MAX_BATCH": "8"})
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["server"]["port"] == 9400 and shown["batching"]["max_batch"] == 8
    assert shown["source"] == str(path)
    toml = cli("config", "show", "--config", str(path))
    assert toml.returncode == 0
    rendered = tmp_path / "rendered.toml"
    rendered.write_text(toml.stdout)
    assert dict(config.load(rendered, environ={})) == dict(config.load(path, environ={}))


def test_config_show_never_prints_the_token(tmp_path):
    path = write(tmp_path, '[server]\ntoken = "do-not-print-me-123"\n')
    for args in (("--json",), ()):
        done = cli("config", "show", "--config", str(path), *args)
        assert done.returncode == 0 and "do-not-print-me-123" not in done.stdout and "<set>" in done.stdout
    assert config.server_token(config.load(path, environ={})) == "do-not-print-me-123"
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    assert config.server_token(
        config.load(write(tmp_path, f'[server]\ntoken_file = "{token_file}"\n'), environ={})
    ) == ("from-a-file")
