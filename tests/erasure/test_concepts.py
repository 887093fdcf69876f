from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import saeuron.erasure.concepts.build as concept_build
import saeuron.erasure.concepts.prompts as concept_prompt_sets
from saeuron.cli.main import build_parser
from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept
from saeuron.erasure.concepts.prompts import concept_prompts
from saeuron.erasure.concepts.select import (
    contrastive_scores,
    percentile_count,
    select_contrastive,
    select_shortcut,
)
from saeuron.erasure.concepts.stats import ConceptStats, collect_stats
from saeuron.erasure.features import ConceptFeatures
from saeuron.models.hookpoints import resolve_module
from saeuron.sae import Sae, SaeConfig
from saeuron.utils.config import ConfigError
from saeuron.utils.prompts import neutral_prompts

HOOK = "unet.up_blocks.1.attentions.1"
STEPS = 3
BUILD_STEPS = 2  # builds sample several concepts: keep them short


@pytest.fixture(scope="module")
def sae() -> Sae:
    torch.manual_seed(3)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    sae.meta.update(hookpoint=HOOK, source="test-sae")
    return sae


@contextmanager
def count_unet_calls(pipe) -> Iterator[list[int]]:
    calls: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def stats(concept: str, mean, active=None, n_prompts: int = 10, **meta) -> ConceptStats:
    mean = torch.as_tensor(mean, dtype=torch.float32)
    if mean.ndim == 1:
        mean = mean[None]
    active = torch.full_like(mean, 0.5) if active is None else torch.as_tensor(active).float()
    return ConceptStats(
        concept=concept,
        mean=mean,
        active_frac=active.reshape(mean.shape),
        n_prompts=n_prompts,
        timesteps=torch.arange(mean.shape[0], dtype=torch.float32),
        meta=meta,
    )


# -- statistics on the tiny pipeline ----------------------------------------------------------


@pytest.mark.parametrize(("guidance_half", "site"), [("cond", "output"), ("both", "update")])
def test_stats_match_a_naive_computation(tiny_sd, sae, guidance_half, site) -> None:
    prompt, seed = "a photo of a cat", 5
    module = resolve_module(tiny_sd, HOOK)
    seen: list[torch.Tensor] = []

    def record(m, args, kwargs, out):
        x = out[0] if isinstance(out, tuple) else out.sample
        x = x - args[0] if site == "update" else x
        seen.append(x.detach().clone())

    handle = module.register_forward_hook(record, with_kwargs=True)
    try:
        tiny_sd(
            prompt,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="latent",
        )
    finally:
        handle.remove()

    got = collect_stats(
        tiny_sd,
        sae,
        [prompt],
        concept="cat",
        hookpoint=HOOK,
        num_inference_steps=STEPS,
        seed=seed,
        guidance_half=guidance_half,
        activation_site=site,
        progress=False,
    )
    assert got.mean.shape == got.active_frac.shape == (STEPS, sae.num_latents)
    assert got.n_prompts == 1 and got.steps == list(range(STEPS))
    assert torch.equal(got.timesteps, tiny_sd.scheduler.timesteps.float())
    assert got.meta["hookpoint"] == HOOK and got.meta["prompts"] == [prompt]
    for step, x in enumerate(seen):  # DDIM calls the UNet once per step, in order
        rows = x if guidance_half == "both" else x[1:]  # [uncond; cond]
        tokens = rows.permute(0, 2, 3, 1).reshape(-1, 32)  # 8x8 positions, 32 channels
        dense = sae.encode_dense(tokens)
        torch.testing.assert_close(got.mean[step], dense.mean(0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got.active_frac[step], (dense > 0).float().mean(0))
    assert (got.active_frac > 0).any() and got.mean.min() >= 0


def test_step_subset_stops_early_and_batches_do_not_matter(tiny_sd, sae) -> None:
    prompts = ["a cat", "a dog on grass", "a red car"]
    kwargs = dict(concept="x", hookpoint=HOOK, num_inference_steps=STEPS, seed=1, progress=False)
    decoded: list[int] = []
    handle = tiny_sd.vae.decoder.register_forward_pre_hook(lambda m, a: decoded.append(1))
    try:
        with count_unet_calls(tiny_sd) as full_calls:
            full = collect_stats(tiny_sd, sae, prompts, batch_size=3, **kwargs)
        with count_unet_calls(tiny_sd) as sub_calls:
            sub = collect_stats(tiny_sd, sae, prompts, batch_size=2, steps=[1], **kwargs)
    finally:
        handle.remove()
    assert len(full_calls) == STEPS
    assert len(sub_calls) == 2 * 2  # two batches, each stopped right after step 1
    assert decoded == []  # latents out, no VAE decode
    assert sub.mean.shape == (1, sae.num_latents) and sub.steps == [1]
    torch.testing.assert_close(sub.mean[0], full.mean[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sub.active_frac[0], full.active_frac[1])
    assert sub.timesteps[0] == tiny_sd.scheduler.timesteps[1]
    assert tiny_sd._interrupt is False  # the next ordinary call samples every step


def test_bad_steps_and_hookpoint_are_rejected(tiny_sd, sae) -> None:
    with pytest.raises(ConfigError, match="steps"):
        collect_stats(
            tiny_sd,
            sae,
            ["a"],
            concept="x",
            hookpoint=HOOK,
            num_inference_steps=3,
            steps=[3],
            progress=False,
        )
    with pytest.raises(ConfigError, match="hookpoint"):
        collect_stats(tiny_sd, sae, ["a"], concept="x", hookpoint="unet.nope", progress=False)


# -- scores and selection -----------------------------------------------------------------------


def test_scores_pick_a_planted_concept_feature() -> None:
    n = 64
    base = torch.ones(2, n)
    target = base.clone()
    target[:, 5] = 20.0  # the concept's own feature
    target[:, 9] = 20.0  # ... and one that fires on everything
    other = base.clone()
    other[:, 9] = 20.0
    features = select_contrastive(stats("cat", target), [stats("neutral", other)], percentile=90.0)
    for step in range(2):
        idx, mean, _ = features.at(step)
        assert 5 in idx.tolist() and 9 not in idx.tolist()
        assert idx[0] == 5 and mean[0] == pytest.approx(20.0)
    s = contrastive_scores(stats("cat", target), [stats("neutral", other)])
    assert s[0, 5] > 0 > s[0, 9]
    assert features.meta["method"] == "contrastive" and features.meta["others"] == ["neutral"]


@pytest.mark.parametrize(("p", "count"), [(99.999, 1), (99.995, 2), (99.99, 3)])
def test_percentile_selects_1_2_3_of_20480_latents(p, count) -> None:
    n = 20_480
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(n, generator=gen) + 0.1
    other = torch.ones(n)
    features = select_contrastive(stats("c", target), [stats("o", other)], percentile=p)
    idx, _, _ = features.at(0)
    s = contrastive_scores(stats("c", target), [stats("o", other)])[0].numpy()
    assert len(idx) == count == int((s > np.percentile(s, p)).sum()) == percentile_count(n, p)
    assert idx.tolist() == np.argsort(-s)[:count].tolist()  # best first


def test_tau_selects_the_top_scores_per_step() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(3, 50, generator=gen)
    other = torch.rand(3, 50, generator=gen)
    features = select_contrastive(stats("c", target), [stats("o", other)], tau=4)
    s = contrastive_scores(stats("c", target), [stats("o", other)])
    assert features.indices.shape == (3, 4)
    for step in range(3):
        assert features.indices[step].tolist() == torch.argsort(-s[step])[:4].tolist()
    with pytest.raises(ValueError, match="exactly one"):
        select_contrastive(stats("c", target), [stats("o", other)], tau=4, percentile=99.0)
    with pytest.raises(ValueError, match="exactly one"):
        select_contrastive(stats("c", target), [stats("o", other)])


def test_activity_filter_drops_dead_and_overactive_latents() -> None:
    n = 32
    target = torch.ones(n)
    target[[3, 5, 7]] = torch.tensor([4.0, 10.0, 8.0])
    active = torch.full((n,), 0.5)
    active[5] = 0.005  # rarely active: a few huge activations
    active[7] = 1.0  # active on every token
    t, o = stats("c", target, active), stats("o", torch.ones(n))
    plain = select_contrastive(t, [o], tau=3)
    assert plain.indices[0].tolist() == [5, 7, 3]
    filtered = select_contrastive(t, [o], tau=3, active_range=(0.01, 0.99))
    assert filtered.indices[0, 0] == 3 and {5, 7}.isdisjoint(filtered.latents())
    assert filtered.meta["active_range"] == [0.01, 0.99]
    # The percentile is taken over the remaining candidates: the step keeps its best one.
    assert select_contrastive(t, [o], percentile=99.0, active_range=(0.01, 0.99)).latents() == {3}


def test_max_other_ratio_drops_latents_a_single_neighbour_shares() -> None:
    n = 32
    target = torch.ones(n)
    target[[3, 5]] = torch.tensor([6.0, 10.0])
    # Latent 5 scores best against the pool, but one neighbour fires it as much as the target.
    neighbour, far_a, far_b = torch.ones(n), torch.ones(n), torch.ones(n)
    neighbour[5] = 9.0
    others = [stats("near", neighbour), stats("a", far_a), stats("b", far_b)]
    t = stats("c", target)
    assert select_contrastive(t, others, tau=1).indices[0].tolist() == [5]
    picked = select_contrastive(t, others, tau=1, max_other_ratio=0.5)
    assert picked.indices[0].tolist() == [3] and picked.meta["max_other_ratio"] == 0.5
    # A ratio above 9/10 lets latent 5 back in.
    assert select_contrastive(t, others, tau=1, max_other_ratio=0.95).indices[0].tolist() == [5]
    with pytest.raises(ConfigError, match="max_other_ratio"):
        select_contrastive(t, others, tau=1, max_other_ratio=0.0)


def test_active_gate_raises_thresholds_to_a_share_of_the_mean_where_the_latent_fires() -> None:
    n = 16
    target = torch.ones(n)
    target[[2, 9]] = torch.tensor([4.0, 6.0])
    active = torch.full((n,), 0.5)
    active[9] = 0.25  # fires on a quarter of the tokens: 24 on average where it fires
    t, o = stats("c", target, active), stats("o", torch.ones(n))
    plain = select_contrastive(t, [o], tau=2)
    gated = select_contrastive(t, [o], tau=2, active_gate=0.5)
    assert plain.indices[0].tolist() == gated.indices[0].tolist() == [9, 2]
    # The paper's threshold is the mean of the per-concept means: (6 + 1) / 2 and (4 + 1) / 2.
    assert plain.threshold[0].tolist() == pytest.approx([3.5, 2.5])
    # Gated: at least half the mean where it fires, 0.5 x 6 / 0.25 and 0.5 x 4 / 0.5.
    assert gated.threshold[0].tolist() == pytest.approx([12.0, 4.0])
    assert gated.meta["active_gate"] == 0.5
    assert select_contrastive(t, [o], tau=2, active_gate=0.1).threshold[0].tolist() == (
        pytest.approx([3.5, 2.5])
    ), "a gate below the paper's threshold leaves it"
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="^active_gate:"):
            select_contrastive(t, [o], tau=2, active_gate=bad)


def test_thresholds_are_the_mean_of_per_concept_means() -> None:
    gen = torch.Generator().manual_seed(2)
    mu_c, mu_a, mu_b = (torch.rand(2, 16, generator=gen) for _ in range(3))
    target = stats("c", mu_c, n_prompts=4)
    others = [stats("a", mu_a, n_prompts=10), stats("b", mu_b, n_prompts=30)]
    features = select_contrastive(target, others, tau=5)
    want_thr = (mu_c + mu_a + mu_b) / 3  # each concept once, whatever its prompt count
    for step in range(2):
        idx = features.indices[step]
        torch.testing.assert_close(features.threshold[step], want_thr[step, idx])
        torch.testing.assert_close(features.mean[step], mu_c[step, idx])
    # mu_notc weighs every prompt equally: concept b counts three times as much as a.
    mu_notc = (10 * mu_a + 30 * mu_b) / 40
    want = mu_c / mu_c.sum(-1, keepdim=True) - mu_notc / mu_notc.sum(-1, keepdim=True)
    torch.testing.assert_close(contrastive_scores(target, others).float(), want)


def test_steps_with_fewer_latents_are_padded() -> None:
    target = torch.ones(2, 8)
    target[0, 2] = 5.0  # one clear winner at step 0, none at step 1
    features = select_contrastive(stats("c", target), [stats("o", torch.ones(2, 8))], percentile=90)
    assert features.indices[0].tolist()[0] == 2
    assert len(features.at(1)[0]) == 0
    assert features.meta["selected_per_step"] == [1, 0]


def test_shortcut_takes_top_by_mean_with_zero_or_neutral_threshold() -> None:
    mean = torch.tensor([0.0, 3.0, 1.0, 5.0, 0.5, 2.0])
    target = stats("cat", mean, steps=[10], num_inference_steps=50, hookpoint=HOOK)
    features = select_shortcut(target, tau=3)
    assert features.num_steps == 1 and features.indices.tolist() == [[3, 1, 5]]
    assert features.mean.tolist() == [[5.0, 3.0, 2.0]]
    assert features.threshold.tolist() == [[0.0, 0.0, 0.0]]
    assert features.hookpoint == HOOK and features.meta["shortcut_step"] == 10
    assert features.stats_step(37, 50) == 0  # one step: the same at every sampling step

    neutral_mean = torch.arange(12, dtype=torch.float32).reshape(2, 6) / 10
    neutral = stats("neutral", neutral_mean, steps=[0, 10])
    with_neutral = select_shortcut(target, tau=2, neutral=neutral)
    torch.testing.assert_close(with_neutral.threshold[0], neutral_mean[1, [3, 1]])
    with pytest.raises(ValueError, match="lack step 10"):
        select_shortcut(target, tau=2, neutral=stats("n", neutral_mean[:1], steps=[0]))


def test_shortcut_build_stops_at_the_needed_step(tiny_sd, sae, tmp_path) -> None:
    cfg = ConceptBuildConfig(
        concept="cat",
        model="tiny-sd",
        sae="unused",
        method="shortcut",
        num_inference_steps=4,
        shortcut_step=1,
        shortcut_images=4,
        batch_size=2,
        tau=3,
        cache_dir=str(tmp_path),
    )
    with count_unet_calls(tiny_sd) as calls:
        features = build_concept(cfg, pipe=tiny_sd, sae=sae)
    assert len(calls) == 2 * 2  # 2 batches of 2 images, each stopped after step 1
    assert features.num_steps == 1 and len(features.at(0)[0]) == 3
    assert features.meta["method"] == "shortcut" and features.meta["threshold"] == "zero"
    # Top by mean activation of the concept's own images at that step.
    direct = collect_stats(
        tiny_sd,
        sae,
        ["cat"] * 4,
        concept="cat",
        hookpoint=HOOK,
        num_inference_steps=4,
        steps=[1],
        batch_size=2,
        progress=False,
    )
    assert features.indices[0].tolist() == torch.argsort(-direct.mean[0])[:3].tolist()


# -- cache and build ----------------------------------------------------------------------------


def tiny_cfg(tmp_path: Path, **overrides) -> ConceptBuildConfig:
    others = tmp_path / "others.txt"
    if not others.exists():
        others.write_text("# neutral\na bowl of fruit\na quiet street\n", encoding="utf-8")
    settings = dict(
        concept="cat",
        model="tiny-sd",
        sae="unused",
        num_prompts=2,
        others=str(others),
        num_inference_steps=BUILD_STEPS,
        batch_size=2,
        tau=2,
        cache_dir=str(tmp_path / "cache"),
    )
    return ConceptBuildConfig(**{**settings, **overrides})


def test_cache_reuses_stats_and_recomputes_when_needed(tiny_sd, sae, tmp_path, request):
    cfg = tiny_cfg(tmp_path)
    with count_unet_calls(tiny_sd) as first:
        features = build_concept(cfg, pipe=tiny_sd, sae=sae)
    assert len(first) == 2 * BUILD_STEPS  # target batch + others batch
    assert features.indices.shape == (BUILD_STEPS, 2) and features.hookpoint == HOOK

    # Fully cached: no UNet call, and not even a pipeline load.
    request.getfixturevalue("forbid_model_loading")
    with count_unet_calls(tiny_sd) as second:
        again = build_concept(cfg, sae=sae)
    assert second == []
    assert torch.equal(again.indices, features.indices)
    assert torch.equal(again.threshold, features.threshold)

    # The gate is a selection setting: same statistics, same latents, higher thresholds.
    gated = build_concept(cfg.replace(active_gate=0.5), sae=sae)
    assert torch.equal(gated.indices, features.indices) and gated.meta["active_gate"] == 0.5
    assert bool((gated.threshold >= features.threshold).all())
    assert bool((gated.threshold > features.threshold).any())

    # A new concept reuses the others' entry: only its own prompts are sampled.
    with count_unet_calls(tiny_sd) as dog:
        build_concept(cfg.replace(concept="dog"), pipe=tiny_sd, sae=sae)
    assert len(dog) == BUILD_STEPS

    # A changed setting is a different entry.
    with count_unet_calls(tiny_sd) as reseeded:
        build_concept(cfg.replace(seed=7), pipe=tiny_sd, sae=sae)
    assert len(reseeded) == 2 * BUILD_STEPS

    # Different SAE weights: different entry.
    other_sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    other_sae.meta.update(sae.meta)
    with count_unet_calls(tiny_sd) as new_sae:
        build_concept(cfg, pipe=tiny_sd, sae=other_sae)
    assert len(new_sae) == 2 * BUILD_STEPS

    # A corrupt entry is ignored and recomputed (only that one).
    cat_entries = sorted(Path(cfg.cache_dir).glob("cat-*.safetensors"))
    for path in cat_entries:
        path.write_bytes(b"not a safetensors file")
    with count_unet_calls(tiny_sd) as repaired:
        fixed = build_concept(cfg, pipe=tiny_sd, sae=sae)
    assert len(repaired) == BUILD_STEPS  # only the entry this build needs
    assert torch.equal(fixed.indices, features.indices)
    # ... and it is whole again.
    with count_unet_calls(tiny_sd) as after:
        build_concept(cfg, pipe=tiny_sd, sae=sae)
    assert after == []


def test_partial_cache_entry_is_recomputed(tiny_sd, sae, tmp_path) -> None:
    cfg = tiny_cfg(tmp_path, method="shortcut", shortcut_step=0, shortcut_images=1, others=None)
    build_concept(cfg, pipe=tiny_sd, sae=sae)
    (entry,) = Path(cfg.cache_dir).glob("cat-*.json")
    entry.write_text(entry.read_text()[:20], encoding="utf-8")  # torn write
    with count_unet_calls(tiny_sd) as calls:
        build_concept(cfg, pipe=tiny_sd, sae=sae)
    assert len(calls) == 1
    assert not list(Path(cfg.cache_dir).glob(".*.tmp"))  # atomic writes leave no debris


def test_build_writes_features_and_cli_prints_summary(tiny_sd, sae, tmp_path, monkeypatch, capsys):
    folder = sae.save_to_disk(tmp_path / "sae")
    monkeypatch.setattr(concept_build, "load_pipeline", lambda *a, **k: tiny_sd)
    parser = build_parser("concept")
    out = tmp_path / "feats" / "cat"
    others = tmp_path / "others.txt"
    others.write_text("a bowl of fruit\n", encoding="utf-8")
    args = parser.parse_args(
        [
            "concept",
            "build",
            "cat",
            "--model",
            "tiny-sd",
            "--sae",
            str(folder),
            "--num-prompts",
            "1",
            "--num-inference-steps",
            "2",
            "--others",
            str(others),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--activity-filter",
        ]
    )
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "concept 'cat'" in printed and "2 steps" in printed and "per step" in printed
    loaded = ConceptFeatures.load(out)
    assert loaded.num_steps == 2 and loaded.hookpoint == HOOK
    assert loaded.meta["active_range"] == [0.01, 0.99]
    assert loaded.meta["selected_per_step"] == [int((r >= 0).sum()) for r in loaded.indices]


def test_hookpoint_is_required_when_the_sae_does_not_know_it(tiny_sd, tmp_path) -> None:
    bare = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    with pytest.raises(ConfigError, match="hookpoint"):
        build_concept(tiny_cfg(tmp_path), pipe=tiny_sd, sae=bare)


# -- persistence, prompts, config ---------------------------------------------------------------


def test_stats_and_features_round_trip(tmp_path) -> None:
    gen = torch.Generator().manual_seed(4)
    original = stats(
        "Van Gogh",
        torch.rand(3, 20, generator=gen),
        torch.rand(3, 20, generator=gen),
        n_prompts=7,
        steps=[0, 1, 2],
        prompts=["a", "b"],
        hookpoint=HOOK,
    )
    base = original.save(tmp_path / "vg")
    assert base.with_suffix(".safetensors").is_file() and base.with_suffix(".json").is_file()
    loaded = ConceptStats.load(tmp_path / "vg")
    assert loaded.concept == "Van Gogh" and loaded.n_prompts == 7 and loaded.meta == original.meta
    assert torch.equal(loaded.mean, original.mean)
    assert torch.equal(loaded.active_frac, original.active_frac)
    assert torch.equal(loaded.timesteps, original.timesteps)

    features = select_contrastive(loaded, [stats("o", torch.rand(3, 20, generator=gen))], tau=2)
    features.save(tmp_path / "vg_features")
    back = ConceptFeatures.load(tmp_path / "vg_features")
    assert torch.equal(back.indices, features.indices) and torch.equal(back.mean, features.mean)
    assert torch.equal(back.threshold, features.threshold) and back.meta == json.loads(
        json.dumps(features.meta)
    )


def test_prompt_sets() -> None:
    neutral = neutral_prompts()
    assert len(neutral) >= 100 and len(set(neutral)) == len(neutral)
    assert not any(p.startswith("#") for p in neutral)
    prompts = concept_prompts("a cat", 25)
    assert len(prompts) == 25 and all("a cat" in p for p in prompts)
    assert len(set(prompts)) == len(concept_prompt_sets.CONCEPT_TEMPLATES) >= 20
    with pytest.raises(ValueError):
        concept_prompts("cat", 0)


def test_other_concepts_from_json(tmp_path, sae, tiny_sd) -> None:
    path = tmp_path / "others.json"
    path.write_text(json.dumps({"cat": ["a cat"], "dog": ["a dog"], "car": ["a car", "a bus"]}))
    assert concept_prompt_sets.read_other_concepts(path) == {
        "cat": ["a cat"],
        "dog": ["a dog"],
        "car": ["a car", "a bus"],
    }
    cfg = tiny_cfg(tmp_path, others=str(path), num_inference_steps=2)
    features = build_concept(cfg, pipe=tiny_sd, sae=sae)
    assert features.meta["others"] == ["dog", "car"]  # the target is not its own "other"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dog": []}))
    with pytest.raises(ConfigError, match="others"):
        concept_prompt_sets.read_other_concepts(bad)


def test_cache_dir_default_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path))
    cfg = ConceptBuildConfig(concept="cat", model="m", sae="s")
    assert cfg.cache_dir == str(tmp_path / "concepts")
    monkeypatch.delenv("SAEURON_CACHE")
    assert ConceptBuildConfig(concept="cat", model="m", sae="s").cache_dir.endswith(
        str(Path(".cache") / "saeuron" / "concepts")
    )


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"concept": "  "}, "concept"),
        ({"model": ""}, "model"),
        ({"sae": ""}, "sae"),
        ({"hookpoint": ""}, "hookpoint"),
        ({"method": "magic"}, "method"),
        ({"prompts": "/no/such/prompts.txt"}, "prompts"),
        ({"num_prompts": 0}, "num_prompts"),
        ({"others": "/no/such/others.txt"}, "others"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"percentile": 100.0}, "percentile"),
        ({"percentile": 0.0}, "percentile"),
        ({"tau": 0}, "tau"),
        ({"min_active": -0.1}, "min_active"),
        ({"max_active": 1.5}, "max_active"),
        ({"min_active": 0.5, "max_active": 0.4}, "min_active"),
        ({"shortcut_step": 50, "method": "shortcut"}, "shortcut_step"),
        ({"shortcut_step": -1}, "shortcut_step"),
        ({"shortcut_images": 0}, "shortcut_images"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"device": "warp-drive"}, "device"),
        ({"guidance_half": "uncond"}, "guidance_half"),
        ({"cache_dir": ""}, "cache_dir"),
        ({"out": ""}, "out"),
        ({"active_gate": -0.5}, "active_gate"),
        ({"active_gate": float("nan")}, "active_gate"),
    ],
)
def test_config_validation(overrides, field_name) -> None:
    with pytest.raises(ConfigError) as err:
        ConceptBuildConfig(**{"concept": "cat", "model": "m", "sae": "s", **overrides})
    assert err.value.field == field_name
    assert field_name in str(err.value)


def test_config_messages_name_allowed_values() -> None:
    with pytest.raises(ConfigError, match="'contrastive', 'shortcut'"):
        ConceptBuildConfig(concept="c", model="m", sae="s", method="x")
    with pytest.raises(ConfigError, match="'cond', 'both'"):
        ConceptBuildConfig(concept="c", model="m", sae="s", guidance_half="x")
    with pytest.raises(ConfigError, match="unknown key"):
        ConceptBuildConfig.from_dict({"concept": "c", "model": "m", "sae": "s", "percentil": 9})
    cfg = ConceptBuildConfig.from_dict(
        {"concept": "c", "model": "m", "sae": "s", "tau": "3", "others": "neutral"}
    )
    assert cfg.tau == 3 and cfg.active_range is None


# -- one concept workflow: names, defaults and thresholds ---------------------------------------


def test_bundled_names_resolve_the_sae_and_each_concepts_hookpoint() -> None:
    from saeuron.models.bundles import find_bundle

    saes = str(find_bundle("minicanvas").sae_folder)
    for sae in ("minicanvas", None):
        moon = ConceptBuildConfig(concept="moon", model="minicanvas", sae=sae)
        checkered = ConceptBuildConfig(concept="checkered", model="minicanvas", sae=sae)
        assert (moon.sae, moon.hookpoint) == (saes, "unet.up_blocks.1.attentions.1")
        assert (checkered.sae, checkered.hookpoint) == (saes, "unet.up_blocks.1.attentions.2")
    # A known hub model's published SAE, and a model without one.
    sd = ConceptBuildConfig(concept="cat", model="CompVis/stable-diffusion-v1-4")
    assert (sd.sae, sd.hookpoint) == ("bcywinski/SAeUron_coco", HOOK)
    with pytest.raises(ConfigError, match="^sae:"):
        ConceptBuildConfig(concept="cat", model="someone/model")


def test_cli_concept_build_takes_the_bundled_sae_without_a_hookpoint(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path))
    from saeuron.cli.main import main

    out = tmp_path / "moon"
    code = main(["concept", "build", "moon", "--model", "minicanvas", "--sae", "minicanvas",
                 "--method", "shortcut", "--shortcut-images", "2", "--num-inference-steps", "4",
                 "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    features = ConceptFeatures.load(out)
    assert features.hookpoint == "unet.up_blocks.1.attentions.1"
    assert len(features.latents()) == 10 and features.meta["shortcut_step"] == 3


def test_shortcut_defaults_are_the_techniques() -> None:
    from saeuron.erasure.concepts.build import SHORTCUT_IMAGES, SHORTCUT_STEP, SHORTCUT_TAU
    from saeuron.erasure.technique import SAeUronConfig

    cfg = ConceptBuildConfig(concept="cat", model="m", sae="s", method="shortcut")
    assert (cfg.tau, cfg.shortcut_step, cfg.shortcut_images) == (None, SHORTCUT_STEP, 20)
    assert (SHORTCUT_TAU, SHORTCUT_STEP, SHORTCUT_IMAGES) == (10, 10, 20)
    short = ConceptBuildConfig(concept="cat", model="m", sae="s", num_inference_steps=4)
    assert short.shortcut_step == 3  # the last step of a short schedule
    # The technique leaves them to the build config: the same numbers everywhere.
    assert SAeUronConfig(model="m", sae="s").num_features is None


def test_thresholds_against_a_small_set_are_calibrated_to_the_papers_count() -> None:
    from saeuron.erasure.concepts.select import calibrated_threshold

    mu_c = torch.tensor([[4.0, 1.0, 0.0]])
    neutral = stats("neutral", [[0.0, 1.0, 2.0]])
    plain, n = calibrated_threshold(stats("c", mu_c), [neutral], None)
    assert n == 2 and torch.allclose(plain, torch.tensor([[2.0, 1.0, 1.0]]))
    calibrated, n = calibrated_threshold(stats("c", mu_c), [neutral], 20)
    assert n == 20
    assert torch.allclose(calibrated, mu_c / 20 + 0.95 * neutral.mean)
    assert calibrated[0, 0] == pytest.approx(plain[0, 0] / 10)  # a concept-only latent
    # With as many concepts as asked, it is the paper's plain mean over all of them.
    others = [stats(f"o{i}", torch.rand(1, 3)) for i in range(19)]
    full, n = calibrated_threshold(stats("c", mu_c), others, 20)
    expected = torch.stack([mu_c] + [o.mean for o in others]).mean(0)
    assert n == 20 and torch.equal(full, expected)
    features = select_contrastive(stats("c", mu_c), [neutral], tau=1, threshold_concepts=20)
    assert features.meta["threshold_concepts"] == 20
    assert features.threshold[0, 0] == pytest.approx(0.2)


def test_statistics_and_features_written_with_cfg_half_read_as_guidance_half(tmp_path) -> None:
    bundled = Path(concept_build.__file__).parents[2] / "data" / "minicanvas"
    hook = "unet.up_blocks.1.attentions.1"
    read = {}
    for kind in ("stats", "features"):
        for concept in ("moon", "star"):
            for suffix in (".json", ".safetensors"):
                source = bundled / kind / hook / f"{concept}{suffix}"
                target = tmp_path / kind / f"{concept}{suffix}"
                target.parent.mkdir(exist_ok=True)
                data = source.read_bytes()
                if suffix == ".json":
                    assert b'"guidance_half": "cond"' in data
                    data = data.replace(b'"guidance_half": "cond"', b'"cfg_half": "both"')
                target.write_bytes(data)
    read["stats"] = ConceptStats.load(tmp_path / "stats" / "moon")
    read["features"] = ConceptFeatures.load(tmp_path / "features" / "moon")
    for kind, loaded in read.items():
        assert loaded.meta["guidance_half"] == "both", kind
        assert "cfg_half" not in loaded.meta, kind
    # Features selected from old statistics record the setting under its new name.
    other = ConceptStats.load(tmp_path / "stats" / "star")
    chosen = select_contrastive(read["stats"], [other], tau=2)
    assert chosen.meta["guidance_half"] == "both" and "cfg_half" not in chosen.meta
