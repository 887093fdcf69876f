"""Wall time of ``saeuron <command> --help`` for every command: median of a few fresh runs.

    python benchmarks/cli_help_time.py               # every command, median of 3
    python benchmarks/cli_help_time.py train ui -n 5 # some commands, median of 5

Each run is a new interpreter (``python -m saeuron <command> --help``), so it measures what a
user waits for: interpreter start, the command module's imports and building its parser. A
command whose ``--help`` fails (its module not written yet, say) is reported with its error.
The exit code is 1 when a command's median is over ``--limit`` seconds (1 s: the issue's
budget).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from saeuron.cli.main import COMMANDS


def help_seconds(command: str) -> float | str:
    """Seconds for one ``--help`` run of ``command``, or the last line of its error."""
    argv = [sys.executable, "-m", "saeuron", command, "--help"]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["no output"])[-1]
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commands", nargs="*", help="commands to time; default: all of them")
    parser.add_argument("-n", "--repeats", type=int, default=3, help="runs per command")
    parser.add_argument("--limit", type=float, default=1.0, help="budget per command (s)")
    args = parser.parse_args()
    commands = args.commands or list(COMMANDS)
    over = []
    print(f"{'command':12s} {'median s':>8s}  runs")
    for command in commands:
        runs = [help_seconds(command) for _ in range(args.repeats)]
        failed = [r for r in runs if isinstance(r, str)]
        if failed:
            print(f"{command:12s} {'failed':>8s}  {failed[0]}")
            continue
        times = [r for r in runs if isinstance(r, float)]
        median = statistics.median(times)
        flag = "  OVER" if median > args.limit else ""
        print(f"{command:12s} {median:8.2f}  {' '.join(f'{t:.2f}' for t in times)}{flag}")
        if median > args.limit:
            over.append(command)
    if over:
        print(f"over {args.limit:g} s: {', '.join(over)}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
