"""The ``saemnesia`` technique on SAEmnesia's published files: its SAE (repo root cfg.json, as
its download script saves it) and the statistics converted from its ``cls_latents_dict``;
per-step selection checked against SAEmnesia's inference, computed here from the pickle."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from saeuron.erasure.convert import convert_params, convert_stats
from saeuron.eval.techniques import build_technique, technique_config
from saeuron.sae import Sae
from saeuron.utils.config import ConfigError

UP11 = "unet.up_blocks.1.attentions.1"  # 32 channels, 8 x 8 tokens in the tiny SD
N, K, STEPS = 128, 4, 4
CLASSES = ("Dogs", "Cats", "Sea", "Towers")


def write_saemnesia(root) -> None:
    """The SAEmnesia hub repo saved into ``<dir>/<hookpoint>/`` (sdxl-unbox-style weights)."""
    folder = root / UP11
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(N, 32, generator=g)
    state = {
        "pre_bias": torch.zeros(32),
        "latent_bias": torch.zeros(N),
        "stats_last_nonzero": torch.zeros(N, dtype=torch.long),
        "encoder.weight": enc,
        "decoder.weight": (enc / enc.norm(dim=1, keepdim=True)).T.contiguous(),
    }
    torch.save({"state_dict": state}, folder / "state_dict.pth")
    cfg = {"n_dirs_local": N, "d_model": 32, "k": K, "auxk": 64, "dead_steps_threshold": 2441}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    (folder / "README.md").write_text("SAEmnesia\n")


def saemnesia_selection(latents: dict, concept: str, percentile: float, step: int):
    """SAEmnesia's own per-step choice: indices, scales / gamma, thresholds."""
    mean_x = latents[concept][:, step, :].float().mean(0)
    others = torch.cat([v[:, step, :].float() for c, v in latents.items() if c != concept])
    mean_o = others.mean(0)
    scores = mean_x / (mean_x.sum() + 1e-8) - mean_o / (mean_o.sum() + 1e-8)
    idx = torch.where(scores > torch.quantile(scores, percentile / 100))[0]
    scale = latents[concept][:, step, idx].float().mean(0)
    thr = sum(v[:, step, idx].float().mean(0) for v in latents.values()) / len(latents)
    return idx, scale, thr


@pytest.fixture
def published(tmp_path):
    """SAE, converted statistics and parameters; the target's latents are the ones that fire
    at each step of sampling 'a photo of dogs' with the tiny SD, so erasing them shows."""
    from saeuron.models.pipelines import load_pipeline

    write_saemnesia(tmp_path / "sae_checkpoint")
    sae = Sae.from_pretrained(tmp_path / "sae_checkpoint", hookpoint=UP11)
    pipe = load_pipeline("tiny-sd", device="cpu")
    module = pipe.unet.get_submodule(UP11.removeprefix("unet."))
    fired = []

    def probe(mod, args, output):
        tokens = output[0][1:].permute(0, 2, 3, 1).reshape(-1, 32)  # the conditional half
        fired.append(sae.encode_dense(tokens).sum(0))

    handle = module.register_forward_hook(probe)
    pipe("a photo of dogs", num_inference_steps=STEPS, guidance_scale=7.5, output_type="latent",
         generator=torch.Generator().manual_seed(0))  # fmt: skip
    handle.remove()
    chosen = [int(f.argmax()) for f in fired]
    g = torch.Generator().manual_seed(1)
    latents = {c: (torch.rand(6, STEPS, N, generator=g) * 0.2).half() for c in CLASSES}
    for step, latent in enumerate(chosen):
        latents["Dogs"][:, step, latent] = 4.0 + step
    with open(tmp_path / f"cls_latents_dict_{UP11}.pkl", "wb") as fh:
        pickle.dump(latents, fh)
    convert_stats(tmp_path / f"cls_latents_dict_{UP11}.pkl", tmp_path / "stats",
                  trust_pickle=True, hookpoint=UP11)  # fmt: skip
    torch.save({c: {"percentile": 99.999, "multiplier": -6.0} for c in CLASSES},
               tmp_path / "class_params.pth")  # fmt: skip
    convert_params(tmp_path / "class_params.pth", tmp_path / "params.json", trust_pickle=True)
    return tmp_path, latents, chosen


def config(root, **kw):
    base = {
        "erase_concept": "Dogs", "model": "tiny-sd", "sae": str(root / "sae_checkpoint"),
        "stats": str(root / "stats"), "params": str(root / "params.json"),
        "num_inference_steps": STEPS, "guidance_scale": 7.5, "device": "cpu", "use_fp16": False,
        "guidance_half": "both", "error_term": "paper",
    }  # fmt: skip
    return technique_config("saemnesia", {**base, **kw})


def test_saemnesia_selects_per_step_as_its_inference(published) -> None:
    root, latents, chosen = published
    cfg = config(root)
    assert cfg.hookpoint == UP11  # recorded by convert, read back
    tech = build_technique("saemnesia", cfg)
    features = tech.tech.concept
    assert features.num_steps == STEPS and tech.tech.multiplier == -6.0
    for step in range(STEPS):
        idx, mean, thr = features.at(step)
        want_idx, want_scale, want_thr = saemnesia_selection(latents, "Dogs", 99.999, step)
        assert idx.tolist() == want_idx.tolist() == [chosen[step]]  # one latent per step
        torch.testing.assert_close(mean, want_scale)
        torch.testing.assert_close(thr, want_thr)
    assert tech.tech.sae.num_latents == N and tech.tech.sae.cfg.k == K
    # The erasure changes the dog image; without it the technique is the model unchanged.
    prompts, seeds = ["a photo of dogs"], [0]
    erased = np.asarray(tech.generate(prompts, seeds)[0], dtype=float)
    plain = np.asarray(tech.unerased(prompts, seeds)[0], dtype=float)
    assert np.abs(erased - plain).mean() > 0.5


def test_saemnesia_percentile_and_gamma_overrides(published) -> None:
    root, latents, _ = published
    tech = build_technique("saemnesia", config(root, percentile=99.0, multiplier=-2.0))
    want, _, _ = saemnesia_selection(latents, "Dogs", 99.0, 0)
    assert features_at(tech, 0) == want.tolist() and len(want) == 2  # 128 latents, p=99
    assert tech.tech.multiplier == -2.0


def features_at(tech, step):
    return tech.tech.concept.at(step)[0].tolist()


def test_saemnesia_published_config_errors(published) -> None:
    root, _, _ = published
    with pytest.raises(ConfigError, match="erase_concept: got 'zebras'.*Cats, Dogs, Sea, Towers"):
        config(root, erase_concept="Zebras")
    (root / "params.json").write_text(json.dumps({"Cats": {"multiplier": -1}}))
    with pytest.raises(ConfigError, match="params: .*no entry for 'Dogs'; it holds Cats"):
        config(root)
    with pytest.raises(ConfigError, match="stats: folder"):
        config(root, stats=str(root / "missing"), params=None)
    with pytest.raises(ConfigError, match="percentile"):
        config(root, params=None, percentile=100.0)
