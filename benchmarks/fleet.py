"""The fleet simulation: N real agent processes and one real mosquitto; a good release rolls out (canaries
first, then promoted), then a bad one halts at its canaries. Prints timings and bytes served as JSON.

    PYTHONPATH=tests python benchmarks/fleet.py [--devices 20] [--canary 10]

The harness is the tests' (tests/support/fleet_sim.py), hence PYTHONPATH=tests; `mosquitto` must be on PATH.
"""

from __future__ import annotations

import argparse
import json

import tests_support


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--canary", type=float, default=10.0)
    options = parser.parse_args()
    fleet_sim = tests_support.load("fleet_sim")
    print(json.dumps(fleet_sim.simulate(options.devices, options.canary), indent=2))


if __name__ == "__main__":
    main()
