"""edge-runtime bench: batch-1 latency percentiles and batch-32 throughput of a bundle on this device."""

from __future__ import annotations

import time

import click
import numpy as np

from .common import load_device, model_options
from .output import print_json_line

SAMPLE_TEXTS = [
    "what is my checking account balance",
    "how do i say thank you in japanese",
    "set an alarm for 6 am tomorrow",
    "is there a fee for using my card abroad",
    "tell me a joke about computers",
    "what's the weather going to be like in paris this weekend",
    "please transfer 200 dollars from savings to checking before friday",
    "how many calories are in a large banana",
]


def _run(model, texts):
    return model.predict(texts) if model.task == "text-classification" else model.embed(texts)


@click.command()
@model_options
@click.option(
    "--requests", "n", type=click.IntRange(10, 100000), default=300, show_default=True, help="Batch-1 requests to time."
)
@click.option("--json", "as_json", is_flag=True)
def bench(config_file, bundle, threads, allow_unsigned, n, as_json):
    """Latency percentiles at batch 1 and throughput at batch 32 on this CPU."""
    model = load_device(config_file, server={"threads": threads}).load_model(bundle, allow_unsigned=allow_unsigned)
    for text in SAMPLE_TEXTS:
        _run(model, [text])  # warm-up: first runs allocate the arena
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        _run(model, [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]])
        latencies.append((time.perf_counter() - started) * 1000.0)
    batch = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(32)]
    rounds, started = 0, time.perf_counter()
    while rounds < 5 or time.perf_counter() - started < 2.0:
        _run(model, batch)
        rounds += 1
    throughput = rounds * 32 / (time.perf_counter() - started)
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    result = {
        "model": f"{model.name}@{model.version}",
        "threads": threads,
        "requests": n,
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "batch32_per_s": float(throughput),
    }
    if as_json:
        print_json_line(result)
        return
    click.echo(f"{result['model']}  threads={threads or 'auto'}")
    click.echo(f"batch 1   p50 {p50:.2f} ms   p90 {p90:.2f} ms   p99 {p99:.2f} ms   ({n} requests)")
    click.echo(f"batch 32  {throughput:.0f} texts/s")
