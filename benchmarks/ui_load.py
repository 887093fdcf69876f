"""Peak memory of ``saeuron ui`` with 1 user against N users at once.

Each count runs in a fresh Python process that serves the MiniCanvas page (one pipeline,
the queue), while N gradio clients move their sliders to different values, each
``--requests`` times. The server's peak resident set size (``VmHWM``) is read after the
requests; the ratio N users / 1 user is the number to watch (target <= 1.3).

    python benchmarks/ui_load.py --users 8 --requests 3
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from gradio_client import Client

from saeuron.ui.config import UiConfig
from saeuron.ui.page import build_app, launch
from saeuron.ui.studio import Studio

PROMPT = "An image of moon in checkered style."


def peak_rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def serve_and_load(users: int, requests: int, steps: int) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cfg = UiConfig(steps=steps, feature_images=2, device="cpu", port=port)
    studio = Studio(cfg)
    studio.warm_up()
    app = build_app(studio)
    launch(app, cfg, block=False)
    url = f"http://127.0.0.1:{port}/"
    loaded = peak_rss_kib()

    def user(i: int) -> int:
        client = Client(url, verbose=False)
        done = 0
        for r in range(requests):
            rows = ["moon", -5.0 - 7 * i - r] + [None, -20.0] * 3
            client.predict(PROMPT, *rows, steps, 188 + i, 7.5, "cond", 1, api_name="/erase")
            done += 1
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(users) as pool:
        served = sum(pool.map(user, range(users)))
    seconds = time.perf_counter() - start
    app.close()
    return {"users": users, "requests": served, "seconds": round(seconds, 2),
            "rss_loaded_mib": loaded / 1024, "rss_peak_mib": peak_rss_kib() / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="slider moves per user")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(serve_and_load(args.child, args.requests, args.steps)))
        return
    rows = []
    for users in (1, args.users):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(users), "--requests", str(args.requests),
             "--steps", str(args.steps)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| users | requests served | seconds | RSS after loading (MiB) | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['users']} | {r['requests']} | {r['seconds']:.1f} | "
              f"{r['rss_loaded_mib']:.0f} | {r['rss_peak_mib']:.0f} |")
    ratio = rows[1]["rss_peak_mib"] / rows[0]["rss_peak_mib"]
    print(f"\npeak RSS, {args.users} users / 1 user: {ratio:.2f}x (target <= 1.3)")


if __name__ == "__main__":
    main()
