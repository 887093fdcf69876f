"""Shared pieces of the eval tests: configs, stand-in techniques, tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "eval"


def config(tmp_path: Path, metrics: list[dict], **technique) -> dict:
    name = technique.pop("name", "none")
    tech = {"erase_concept": "moon", "model": "minicanvas", "device": "cpu", **technique}
    return {
        "output_dir": str(tmp_path / "run"),
        "technique": {"name": name, "config": tech},
        "metrics": metrics,
        "bootstrap": 200,
    }


class ColourTechnique:
    """Red images for prompts of nudity, blue otherwise; seed-dependent noise."""

    calls = 0

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after

    def _draw(self, prompts, seeds):
        ColourTechnique.calls += 1
        if self.fail_after is not None and ColourTechnique.calls > self.fail_after:
            raise KeyboardInterrupt("killed")
        out = []
        for p, s in zip(prompts, seeds):
            rng = np.random.default_rng(s)
            bare = any(w in p for w in ("nude", "naked", "without clothes"))
            base = np.array([200, 30, 30] if bare else [30, 30, 200], dtype=float)
            out.append(Image.fromarray(np.clip(base + rng.normal(0, 10, (16, 16, 3)), 0, 255)
                                       .astype(np.uint8)))  # fmt: skip
        return out

    generate = _draw
    unerased = _draw


class ColourClip:
    """Embeds an image by its redness and a text by whether it names the target."""

    def embed_images(self, images):
        red = torch.tensor([np.asarray(im)[..., 0].mean() > 100 for im in images]).float()
        return torch.stack([red, 1 - red], -1)

    def embed_texts(self, texts):
        nude = torch.tensor(["nudity" in t for t in texts]).float()
        return torch.stack([nude, 1 - nude], -1)


def ua_ira_config(tmp_path, out="run") -> dict:
    monkey_root = ROOT
    return {
        "output_dir": str(tmp_path / out),
        "technique": {"name": "none", "config": {"erase_concept": "nudity", "batch_size": 8}},
        "metric": {"name": "ua_ira", "config": {
            "target_prompts_path": str(monkey_root / "data/nudity_target_prompts.csv"),
            "retain_prompts_path": str(monkey_root / "data/nudity_retain_prompts.csv"),
        }},
        "bootstrap": 100,
    }  # fmt: skip


def tiny_clip(folder: Path) -> Path:
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    from saeuron.models.tokenizer import write_clip_tokenizer_files

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(cfg).save_pretrained(folder)
    tok_dir = write_clip_tokenizer_files(folder / "tok")
    tokenizer = CLIPTokenizer(
        str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77
    )
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    shutil.rmtree(tok_dir)
    return folder


def i2p_csv(path: Path) -> Path:
    path.write_text(
        "prompt,categories,hard,evaluation_seed,evaluation_guidance\n"
        "An image of moon in dotted style.,\"sexual,violence\",1,4242,7\n"
        "An image of star in neon style.,hate,0,17,7\n"
        "An image of heart in pastel style.,sexual,0,99,7\n"
    )
    return path


def nudity_run(tmp_path: Path, **metric) -> dict:
    data = config(tmp_path, [{"name": "asr_i2p", "config": {
        "prompts_path": str(i2p_csv(tmp_path / "i2p.csv")), **metric}}],
        num_inference_steps=4)  # fmt: skip
    data["technique"]["config"]["erase_concept"] = "nudity"
    return data


class FakeNude:
    """Stands in for NudeNet's ONNX model: what it 'sees' is decided by the test."""

    def __init__(self, found):
        self.found = list(found)

    def detect(self, image):
        assert image.ndim == 3 and image.shape[2] == 3  # a BGR array, as from a file
        result = self.found.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def tiny_vilt(folder: Path) -> Path:
    from transformers import (
        BertTokenizer,
        ViltConfig,
        ViltForQuestionAnswering,
        ViltImageProcessor,
        ViltProcessor,
    )

    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "colour", "is", "it", "?"]
    (folder / "vocab.txt").write_text("\n".join(words))
    images = ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=32)
    ViltProcessor(image_processor=images, tokenizer=BertTokenizer(str(folder / "vocab.txt"))
                  ).save_pretrained(folder)  # fmt: skip
    torch.manual_seed(0)
    labels = {0: "red", 1: "blue", 2: "green"}
    ViltForQuestionAnswering(ViltConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, image_size=32, patch_size=16, max_position_embeddings=40,
        num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()},
    )).save_pretrained(folder)  # fmt: skip
    return folder


class PluginColour(ColourTechnique):
    """ColourTechnique as a ``module:Class`` technique: built from its config block."""

    pipe = None

    def __init__(self, erase_concept: str = "nudity", batch_size: int = 8, **_: object):
        super().__init__()
        self.erase_concept = erase_concept

    def erase(self):
        import contextlib

        return contextlib.nullcontext()
