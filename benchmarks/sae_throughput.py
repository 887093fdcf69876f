"""SAE training throughput at a given size, on synthetic tokens: the per-token cost behind
the README's real-size recipe.

    python benchmarks/sae_throughput.py --d-in 1280 --expansion-factor 16 --k 32 \
        --batch-size 4096 --batches 6 --out /tmp/sae-throughput

Writes a capture of ``(batches + 1) x batch-size`` planted tokens (one batch held out) to
``OUT/acts``, trains one epoch with saeuron's trainer into ``OUT/sae`` and prints the tokens
per second as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saeuron.perf.training import planted_tokens, write_capture
from saeuron.training.trainer import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-in", type=int, default=1280)
    parser.add_argument("--expansion-factor", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if min(args.d_in, args.expansion_factor, args.k, args.batch_size, args.batches) < 1:
        parser.error("every size must be at least 1")
    root = Path(args.out)
    n = (args.batches + 1) * args.batch_size
    x = planted_tokens(n, args.d_in, 4000, 16, seed=0)
    capture = write_capture(root / "acts", x.half(), shard_tokens=args.batch_size)
    cfg = TrainConfig(
        activations=str(capture), out=str(root / "sae"), expansion_factor=args.expansion_factor,
        k=args.k, batch_size=args.batch_size, epochs=1, device=args.device,
    )  # fmt: skip
    trainer = Trainer(cfg)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "d_in": args.d_in, "latents": args.d_in * args.expansion_factor, "k": args.k,
        "tokens": trainer.tokens_seen, "seconds": round(seconds, 1),
        "tokens_per_s": round(trainer.tokens_seen / seconds, 1),
        "threads": torch.get_num_threads(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
