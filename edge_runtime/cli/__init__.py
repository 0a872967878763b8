"""The `edge-runtime` command.

Each command group lives in its own module under edge_runtime/cli/ and is imported only when
it is invoked, so `edge-runtime --help` and `predict` stay fast and never import the build stack.
Exit codes: 0 ok, 1 failure (one-line reason on stderr), 2 usage error.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import EdgeRuntimeError

# command name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "predict": ("predict", "predict", "Classify texts with a bundle (arguments or stdin lines)."),
    "eval": ("evaluate", "evaluate", "Evaluate a bundle on a labelled JSONL file."),
    "bench": ("bench", "bench", "Latency percentiles at batch 1 and throughput at batch 32."),
    "doctor": ("doctor", "doctor", "Check this device: CPU features, onnxruntime, kernels, store."),
    "models": ("models", "models", "List, inspect, verify, install, activate and roll back bundles."),
    "keys": ("keys", "keys", "Generate and trust ed25519 signing keys."),
    "build": ("build", "build", "Build a signed INT8 bundle from a Hugging Face model (needs [build])."),
    "calibrate": (
        "calibrate",
        "calibrate",
        "Fit temperature and routing thresholds; write a new signed bundle version.",
    ),
    "redact": ("redact", "redact", "Redact personal data from stdin lines."),
    "outbox": ("outbox", "outbox", "Inspect the escalation outbox: list, retry dead letters, purge."),
    "upstream": ("upstream", "upstream", "Run an upstream worker that answers escalations with a larger bundle."),
    "flywheel": ("flywheel", "flywheel", "Export what upstream workers kept (--dataset) as training data."),
    "serve": ("serve", "serve", "Run the device daemon: HTTP inference (KServe V2 + /v1), batching, hot swap."),
    "status": ("status", "status", "Show the running daemon's model, queue, counters and outbox."),
    "config": ("config", "config", "Check or show the daemon's TOML configuration."),
    "fleet": ("fleet", "fleet", "Fleet manager: sign releases, roll them out to groups (canaries first), watch."),
    "update": (
        "update",
        "update",
        "Device update agent: follow the fleet's desired state, verify, commit or roll back.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, attribute, _ = COMMANDS[name]
        module = importlib.import_module(f"{__name__}.{module_name}")
        return getattr(module, attribute)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
# The version from the source, not from installed metadata: a source checkout has none.
@click.version_option(__version__, prog_name="edge-runtime")
def cli():
    """edge-runtime: small INT8 models on edge devices, hard cases upstream, personal data redacted."""


def main(argv=None) -> int:
    try:
        # standalone_mode=False returns ctx.exit()'s code instead of raising SystemExit
        code = cli.main(args=argv, prog_name="edge-runtime", standalone_mode=False)
    except click.exceptions.Exit as stop:
        return stop.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    except EdgeRuntimeError as error:
        click.echo(f"edge-runtime: {error}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
