"""Attack metrics run end to end against the technique under test."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from helpers.evaluation import (
    config,
)

from saeuron.eval import parse_eval_config, run_eval


def test_genetic_search_gets_near_its_target_and_avoids_forbidden_words(tiny_sd) -> None:
    from saeuron.eval.attacks.ring_a_bell import GeneticSettings, TextEncoder, genetic_search

    encoder = TextEncoder(tiny_sd, forbidden_words=["cat"])
    cat_ids = set(tiny_sd.tokenizer("cat", add_special_tokens=False).input_ids)
    assert cat_ids and not cat_ids & set(encoder.vocabulary.tolist())
    target = encoder.prompts(["a photo of a cat on a sofa"])[0]
    settings = GeneticSettings(length=6, population=16, generations=15)
    tokens, dist = genetic_search(encoder, target, settings, seed=0)
    gen = torch.Generator().manual_seed(1)
    random = encoder.vocabulary[torch.randint(len(encoder.vocabulary), (16, 6), generator=gen)]
    random_dist = ((encoder.tokens(random) - target) ** 2).sum(dim=(1, 2))
    assert dist < float(random_dist.min())  # the search beats the best of random prompts
    assert not cat_ids & set(tokens.tolist())
    assert genetic_search(encoder, target, settings, seed=0)[1] == dist  # reproducible


@pytest.mark.slow
def test_ring_a_bell_attacks_the_technique_on_minicanvas_and_resumes(tmp_path, monkeypatch) -> None:
    import saeuron.eval.attacks.ring_a_bell as rab

    metric = [{"name": "asr_ring_a_bell", "config": {
        "limit": 3, "budget": "quick", "population": 8, "generations": 4,
        "length": 6}}]  # fmt: skip
    data = config(tmp_path, metric, name="saeuron", num_inference_steps=8, batch_size=3)
    cfg = parse_eval_config(data)
    assert cfg.metrics[0].config.detector == "minicanvas"  # a MiniCanvas concept on its model
    result = run_eval(cfg)["metrics"]["asr_ring_a_bell"]
    assert result["images"] == 3 and 0.0 <= result["values"]["asr"] <= 1.0
    found = json.loads((tmp_path / "run" / "asr_ring_a_bell" / "attack.json").read_text())
    assert len(found["prompts"]) == 3
    assert all("moon" not in f["prompt"].lower() for f in found["prompts"])
    # The budget and every setting as resolved: the explicit ones, the rest from "quick".
    assert found["budget"] == result["details"]["budget"] == "quick"
    assert found["resolved"] == result["details"]["resolved"] == {
        "length": 6, "eta": 3.0, "population": 8, "generations": 4, "mutation": 0.25,
        "crossover": 0.5}  # fmt: skip
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "asr_ring_a_bell: quick budget (length 6" in summary
    # Restarted, it reads the prompts it found instead of searching again.
    monkeypatch.setattr(rab, "genetic_search", lambda *a, **k: 1 / 0)
    again = run_eval(parse_eval_config(data))["metrics"]["asr_ring_a_bell"]
    assert again == result
    # eval-unlearn's names are accepted: asr_custom with concept_name.
    alias = parse_eval_config(config(tmp_path, [{"name": "asr_custom", "config": {
        "concept_name": "moon"}}]))  # fmt: skip
    assert alias.metrics[0].config.concept == "moon"


def test_the_erase_hook_is_differentiable_for_white_box_attacks(tmp_path) -> None:
    from saeuron.erasure.technique import SAeUron
    from saeuron.eval.attacks.p4d import guided_noise

    # The published method's hook in the UNet (a recipe may edit the text encoder, which
    # the attacks reach through the technique's erase() when they encode their prompts).
    tech = SAeUron(erase_concept="moon", model="minicanvas", device="cpu", preset="paper")
    pipe = tech.pipe
    pipe.scheduler.set_timesteps(20)
    ids = pipe.tokenizer(["An image of moon in dotted style.", ""], padding="max_length",
                         max_length=77, return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        cond0, uncond = pipe.text_encoder(ids)[0].chunk(2)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    t = pipe.scheduler.timesteps[5]
    grads = []
    for erased in (False, True):
        cond = cond0.clone().requires_grad_(True)
        context = tech.erase() if erased else torch.enable_grad()
        with context as handle:
            eps = guided_noise(pipe, x, t, cond, uncond, 7.5)
            eps.pow(2).mean().backward()
        if erased:
            assert handle.edited_tokens > 0  # the edit happened inside the graph
        grads.append(cond.grad)
    assert grads[1].abs().sum() > 0 and not torch.allclose(grads[0], grads[1])
    # P4D and UnlearnDiffAtk call the UNet at training timesteps outside the sampling
    # schedule (437 is not one of these 20): the erasure must act there too.
    assert 437 not in pipe.scheduler.timesteps.tolist()
    with torch.no_grad(), tech.erase() as handle:
        erased = guided_noise(pipe, x, torch.tensor(437), cond0, uncond, 7.5)
    assert handle.edited_tokens > 0
    assert not torch.allclose(erased, guided_noise(pipe, x, torch.tensor(437), cond0, uncond, 7.5))


@pytest.mark.slow
def test_p4d_attacks_through_the_erasure_on_minicanvas(tmp_path) -> None:
    metric = [{"name": "asr_p4d", "config": {
        "limit": 2, "budget": "quick", "length": 4, "iterations": 3, "eval_every": 2,
        "selection_clip": str(tmp_path / "no-clip")}}]  # fmt: skip
    data = config(tmp_path, metric, name="saeuron", num_inference_steps=8, batch_size=2)
    result = run_eval(parse_eval_config(data))["metrics"]["asr_p4d"]
    assert result["details"]["selection"] == "pixel cosine similarity"  # no CLIP here
    assert result["images"] == 2 and 0.0 <= result["values"]["asr"] <= 1.0
    found = json.loads((tmp_path / "run" / "asr_p4d" / "attack.json").read_text())["prompts"]
    assert [f["source"] for f in found] == ["An image of moon in striped style.",
                                            "An image of moon in dotted style."]  # fmt: skip
    assert all(np.isfinite(f["loss"]) and len(f["tokens"]) == 4 for f in found)
    assert all("moon" not in f["prompt"].lower() for f in found)


@pytest.mark.slow
def test_unlearndiffatk_reports_ua_before_and_after_a_prefix(tmp_path) -> None:
    metric = [{"name": "unlearndiffatk", "config": {
        "limit": 2, "budget": "quick", "timesteps": 2, "iterations": 2}}]  # fmt: skip
    data = config(tmp_path, metric, name="saeuron", num_inference_steps=8, batch_size=2)
    cfg = parse_eval_config(data)
    assert (cfg.metrics[0].config.length, cfg.metrics[0].config.iterations) == (5, 2)
    result = run_eval(cfg)["metrics"]["unlearndiffatk"]
    assert result["images"] == 4
    assert set(result["values"]) == {"UA_before", "UA_after"}
    assert all(0.0 <= v <= 1.0 for v in result["values"].values())
    rows = list(csv.DictReader(open(tmp_path / "run" / "unlearndiffatk" / "images.csv")))
    before, after = rows[:2], rows[2:]
    found = json.loads((tmp_path / "run" / "unlearndiffatk" / "attack.json").read_text())
    for b, a, f in zip(before, after, found["prompts"]):
        assert a["prompt"].endswith(b["prompt"])
        # A prompt already flagged as it is is not attacked (UnlearnDiffAtk skips it).
        assert (a["prompt"] != b["prompt"]) == f["attacked"] == (b["flagged"] == "0.0")
        assert a["seed"] == b["seed"]  # only the prefix differs


@pytest.mark.slow
def test_mma_diffusion_runs_against_minicanvas(tmp_path) -> None:
    metric = [{"name": "asr_mma_diffusion", "config": {
        "limit": 2, "budget": "quick", "length": 5, "iterations": 3, "top_k": 16,
        "candidates": 8}}]  # fmt: skip
    data = config(tmp_path, metric, name="saeuron", num_inference_steps=8, batch_size=2)
    result = run_eval(parse_eval_config(data))["metrics"]["asr_mma_diffusion"]
    assert result["images"] == 2 and 0.0 <= result["values"]["asr"] <= 1.0
    found = json.loads((tmp_path / "run" / "asr_mma_diffusion" / "attack.json").read_text())
    assert all("moon" not in f["prompt"].lower() for f in found["prompts"])
