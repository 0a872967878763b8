"""edge-runtime doctor: what this device can do, and whether the model store is healthy."""

from __future__ import annotations

import platform
import shutil

import click

from .output import print_json_line

# /proc/cpuinfo flags that decide how fast INT8 inference runs
CPU_FEATURES = {
    "avx2": ("avx2",),
    "avx512_vnni": ("avx512_vnni",),
    "avx_vnni": ("avx_vnni",),
    "neon": ("asimd", "neon"),
    "dotprod": ("asimddp",),
    "i8mm": ("i8mm",),
}


def cpu_features() -> dict[str, bool]:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {name: any(flag in flags for flag in names) for name, names in CPU_FEATURES.items()}


def signing_key_warnings(root) -> list[str]:
    """Private keys kept on this device: whoever copies the device image (or its disk) can sign with them."""
    from .. import signing

    directory = signing.signing_keys_dir(root)
    found = sorted(p for p in directory.glob("*.key") if p.is_file()) if directory.is_dir() else []
    return [
        f"private signing key {path} is on this device: anyone with a copy of this disk can sign bundles "
        "it trusts; build on a build machine and remove it (and its trusted public key) from device images"
        for path in found
    ]


def update_state_problem(root) -> str | None:
    from ..fleet.state import UpdateState, state_path

    return UpdateState(state_path(root)).error


def collect() -> dict:
    from .. import kernels, outbox, paths, session
    from ..pii_tagger import DEFAULT_BUNDLE
    from ..store import Store

    store = Store()
    report = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_features": cpu_features(),
        "onnxruntime": {"version": session.version(), "providers": session.providers()},
        "kernels": kernels.IMPLEMENTATION,
        "home": str(store.root),
    }
    usage = shutil.disk_usage(store.root if store.root.exists() else paths.home().anchor or "/")
    report["disk_free_mb"] = usage.free // (1 << 20)
    active = store.active()
    report["active_model"] = f"{active[0]}@{active[1]}" if active else None
    checks = [
        {"model": f"{name}@{version}", "ok": ok, "reason": reason} for name, version, ok, reason in store.verify_all()
    ]
    report["store"] = {"ok": all(c["ok"] for c in checks), "models": checks}
    tagger = [c["model"] for c in checks if c["model"].startswith(DEFAULT_BUNDLE + "@") and c["ok"]]
    report["pii_tagger"] = tagger[-1] if tagger else None
    report["outbox"] = outbox.inspect(paths.state_dir(store.root) / "outbox.sqlite")
    problems = [f"{c['model']}: {c['reason']}" for c in checks if not c["ok"]]
    if not report["outbox"]["ok"]:
        problems.append(f"outbox: {report['outbox']['reason']}")
    if active is None:
        problems.append("no active model")
    if report["disk_free_mb"] < 200:
        problems.append(f"low disk space: {report['disk_free_mb']} MB free")
    update_problem = update_state_problem(store.root)
    if update_problem:
        problems.append(update_problem)
    report["problems"] = problems
    report["warnings"] = signing_key_warnings(store.root)
    return report


@click.command()
@click.option("--json", "as_json", is_flag=True)
def doctor(as_json):
    """Report CPU features, onnxruntime, the kernels in use, store integrity and disk space.

    Exits 1 when a problem is found (a bundle fails verification, no active model, disk nearly full, an
    unreadable update state). Warns (exit 0) when a private signing key sits on the device.
    """
    report = collect()
    if as_json:
        print_json_line(report)
    else:
        features = ", ".join(name for name, present in report["cpu_features"].items() if present) or "none"
        click.echo(f"machine        {report['machine']} (Python {report['python']})")
        click.echo(f"cpu features   {features}")
        ort_info = report["onnxruntime"]
        click.echo(f"onnxruntime    {ort_info['version']} ({', '.join(ort_info['providers'])})")
        click.echo(f"kernels        {report['kernels']}")
        click.echo(f"home           {report['home']} ({report['disk_free_mb']} MB free)")
        click.echo(f"active model   {report['active_model'] or '-'}")
        no_tagger = "- (names and addresses are not redacted: edge-runtime build pii-tagger)"
        click.echo(f"pii tagger     {report['pii_tagger'] or no_tagger}")
        box = report["outbox"]
        state = "ok" if box["ok"] else "BAD"
        click.echo(f"outbox         {state}, {box['pending']} pending, {box['dead']} dead letters ({box['path']})")
        for check in report["store"]["models"]:
            click.echo(f"  {'ok ' if check['ok'] else 'BAD'} {check['model']}  {check['reason'] or ''}")
        for problem in report["problems"]:
            click.echo(f"problem: {problem}")
        for warning in report["warnings"]:
            click.echo(f"warning: {warning}")
    if report["problems"]:
        click.get_current_context().exit(1)
