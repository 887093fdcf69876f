"""Evaluate your own unlearning method beside saeuron's, with `saeuron eval`.

    python examples/eval_own_technique.py [OUT_FOLDER]

A technique is a config (a dataclass of settings, validated before anything loads) and a
class with `generate(prompts, seeds)`, `unerased(prompts, seeds)`, `erase()` and a `pipe`.
Registered under a name in `saeuron.eval.techniques.TECHNIQUES`, it runs with every metric
of `saeuron eval`. Here: a "method" that erases by a fixed negative prompt, on tiny-sd,
measured with the `preservation` metric (SSIM and PSNR against the unerased images).
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeuron.cli.main import main
from saeuron.eval.techniques import TECHNIQUES, TechniqueEntry
from saeuron.models.pipelines import load_pipeline
from saeuron.models.sampling import SamplingConfig, seed_generators
from saeuron.utils.config import Config, field


# --8<-- [start:register]
@dataclass
class MyMethodConfig(Config):
    erase_concept: str = field("cat", help="the concept (the metrics' default concept)")
    model: str = field("tiny-sd", help="model id, local folder, or a bundled name")
    avoid: str = field("blurry", help="the negative prompt my method adds")
    sampling: SamplingConfig = field(SamplingConfig, flatten=True, help="how images are sampled")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sampling = self.sampling.resolved(self.model)


class MyMethod:
    def __init__(self, config: MyMethodConfig):
        self.config = config
        self.pipe = load_pipeline(config.model, device="cpu")

    def _sample(self, prompts: list[str], seeds: list[int], negative: str | None) -> list[Any]:
        return self.pipe(prompts, negative_prompt=[negative] * len(prompts) if negative else None,
                         generator=seed_generators(seeds),
                         **self.config.sampling.call_kwargs()).images

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        return self._sample(prompts, seeds, f"{self.config.erase_concept}, {self.config.avoid}")

    def unerased(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        return self._sample(prompts, seeds, None)

    def erase(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # the denoiser is not changed


def register() -> None:
    if "my_method" not in TECHNIQUES:
        TECHNIQUES.register("my_method")(
            TechniqueEntry(MyMethodConfig, MyMethod, "my method: a fixed negative prompt")
        )
# --8<-- [end:register]


def evaluate(out: Path) -> Path:
    register()
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "output_dir": str(out / "results"),
        "seed": 0,
        "technique": {"name": "my_method",
                      "config": {"erase_concept": "cat", "num_inference_steps": 2}},
        "metrics": [{"name": "preservation", "config": {"limit": 4}}],
    }
    path = out / "my_method.json"
    path.write_text(json.dumps(config, indent=2))
    for argv in (["eval", "-c", str(path), "--check"], ["eval", "-c", str(path)]):
        print("$ saeuron " + " ".join(argv))
        if main(argv) != 0:
            raise SystemExit(1)
    return out / "results" / "summary.md"


if __name__ == "__main__":
    print(evaluate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("eval-own-technique")))
