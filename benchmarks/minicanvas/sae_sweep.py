"""Dictionary size and k sweep on a labelled capture: held-out FVU, dead share, specificity.

For each grid point ``[expansion_factor, k, topk]`` an SAE is trained on the capture
(batch 1024, the last 10% of shards held out, seed 0, a latent silent for 50k tokens is
dead) into OUT_ROOT/e{expansion}_k{k}_{topk}/, and measured:

- heldout_fvu: the trainer's held-out FVU after the last epoch;
- dead_share_heldout: share of latents that never fire (per-token TopK) on the held-out
  shards;
- {style,object}_specific_mass: per concept, the share of its mean code mass (mean over
  the capture's prompts of that concept, over steps) held by latents whose mean on every
  other concept of the kind is at most 0.3x theirs; averaged over the concepts. The
  concepts' statistics are saved under the SAE's folder, stats/<hookpoint>/<concept>.

One JSON line per grid point is printed and added to OUT_ROOT/sweep.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from saeuron.sae import Sae
from saeuron.training.capture_stats import read_label_rows, stats_from_capture
from saeuron.training.shards import ActivationShards
from saeuron.training.trainer import TOPK_MODES, TrainConfig, train_sae
from saeuron.utils.files import TRAIN_LOG
from saeuron.utils.io import atomic_write

HELDOUT_FRACTION = 0.1
SPECIFIC_RATIO = 0.3
KINDS = ("style", "object")


def parse_grid(text: str) -> list[tuple[int, int, str]]:
    try:
        grid = json.loads(text)
        points = [(int(e), int(k), str(t)) for e, k, t in grid]
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(
            f"expected JSON [[expansion, k, topk], ...], got {text!r} ({err})"
        ) from None
    for _, _, topk in points:
        if topk not in TOPK_MODES:
            raise argparse.ArgumentTypeError(f"topk {topk!r} not in {list(TOPK_MODES)}")
    return points


def specific_mass(stats: dict[str, Any]) -> dict[str, float]:
    """Per concept: share of its code mass on latents firing <= 0.3x on any other concept."""
    names = list(stats)
    out = {}
    for c in names:
        t = stats[c].mean
        others = torch.stack([stats[n].mean for n in names if n != c]).amax(0)
        ok = (others <= SPECIFIC_RATIO * t) & (t > 0)
        out[c] = float((t * ok).sum() / t.sum().clamp_min(1e-9))
    return out


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Add one JSON line to ``path``, rewriting it whole so it is never half-written."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    text = old + json.dumps(record) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", help="capture folder written by `saeuron cache`")
    parser.add_argument("out_root", type=Path, help="folder for the SAEs and sweep.jsonl")
    parser.add_argument("labels", help="CSV naming each captured prompt's object and style "
                        "(columns prompt,object,style; one row per captured prompt)")
    parser.add_argument("grid", type=parse_grid,
                        help='JSON list of [expansion_factor, k, topk], e.g. \'[[16,8,"token"]]\'')
    parser.add_argument("--epochs", type=positive, default=6, help="training epochs per SAE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    labels = read_label_rows(args.labels)
    data = ActivationShards(args.capture)
    _, held = data.split(HELDOUT_FRACTION)
    hp = data.manifest["hookpoint"]
    for exp, k, topk in args.grid:
        out = args.out_root / f"e{exp}_k{k}_{topk}"
        t0 = time.time()
        train_sae(TrainConfig(
            activations=args.capture, out=str(out), k=k, expansion_factor=exp,
            batch_size=1024, epochs=args.epochs, heldout_fraction=HELDOUT_FRACTION, seed=0,
            resume=False, dead_tokens=50_000, topk=topk,
        ))
        secs = time.time() - t0
        sae = Sae.from_pretrained(out, hookpoint=hp)
        log = json.loads((out / hp / TRAIN_LOG).read_text(encoding="utf-8"))["epochs"][-1]
        fired = torch.zeros(sae.num_latents, dtype=torch.bool)
        with torch.no_grad():
            for shard in held:
                top = sae.encode(data.load(shard).float())
                idx = top.top_indices.flatten()
                fired[idx[top.top_acts.flatten() > 0]] = True
        res: dict[str, Any] = {
            "expansion": exp, "k": k, "topk": topk, "latents": sae.num_latents,
            "heldout_fvu": log["heldout_fvu"],
            "dead_share_heldout": 1 - fired.float().mean().item(),
            "train_seconds": secs,
        }
        for kind in KINDS:
            stats = stats_from_capture(args.capture, sae, labels, kind)
            spec = specific_mass(stats)
            for c, st in stats.items():
                st.save(out / "stats" / hp / c)
            res[f"{kind}_specific_mass"] = sum(spec.values()) / len(spec)
            res[f"{kind}_specific_mass_per_concept"] = {c: round(v, 3) for c, v in spec.items()}
        print(json.dumps(res), flush=True)
        append_line(args.out_root / "sweep.jsonl", res)


if __name__ == "__main__":
    main()
