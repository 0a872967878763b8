"""The fleet simulation: N real agent processes and one real mosquitto; a good release rolls out (canaries
first, then promoted), then a bad one halts at its canaries. Prints timings and bytes served as JSON.

    PYTHONPATH=tests python benchmarks/fleet.py [--devices 20] [--canary 10] [--mirror]

The harness is the tests' (tests/support/fleet_sim.py), hence PYTHONPATH=tests; `mosquitto` must be on PATH.
--mirror: the releases name an nginx (Debian's package) serving the archives; `broker_share` in the output is
what crossed the broker during the good rollout over the bytes the devices installed.
"""

from __future__ import annotations

import argparse
import json

import tests_support


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--canary", type=float, default=10.0)
    parser.add_argument("--mirror", action="store_true", help="Serve the archives from an nginx mirror.")
    options = parser.parse_args()
    fleet_sim = tests_support.load("fleet_sim")
    print(json.dumps(fleet_sim.simulate(options.devices, options.canary, mirror=options.mirror), indent=2))


if __name__ == "__main__":
    main()
