"""The edit rules beyond the published one (ablate, anchor, project) and the step window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.micro import micro_attention_sd

from saeuron.erasure.erase import EraseConfig, attach, erase
from saeuron.erasure.features import ConceptFeatures
from saeuron.models.hookpoints import resolve_module
from saeuron.sae import Sae, SaeConfig
from saeuron.utils.config import ConfigError

HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture(scope="module")
def sae() -> Sae:
    torch.manual_seed(3)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    sae.meta["hookpoint"] = HOOK
    return sae


def sample(pipe, steps: int = 3) -> np.ndarray:
    out = pipe(
        "a cat",
        num_inference_steps=steps,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return np.asarray(out.images)


def block_outputs(pipe, sae, features, steps: int = 1, **kwargs):
    """The hooked block's output just before and after the erasing hook, at every step."""
    module = resolve_module(pipe, HOOK)
    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    first = module.register_forward_hook(lambda m, i, o: before.append(o[0].detach().clone()))
    try:
        with erase(pipe, sae, features, **kwargs):
            second = module.register_forward_hook(
                lambda m, i, o: after.append(o[0].detach().clone())
            )
            try:
                sample(pipe, steps=steps)
            finally:
                second.remove()
    finally:
        first.remove()
    return before, after


def cond_tokens(x: torch.Tensor) -> torch.Tensor:
    return x[x.shape[0] // 2 :].permute(0, 2, 3, 1).reshape(-1, 32)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_ablate_moves_latents_to_their_retained_value(tiny_sd, sae, path) -> None:
    idx = [0, 4, 8, 12]
    retain = [0.05, 0.0, 0.2, 0.1]
    features = ConceptFeatures(
        "cat", indices=torch.tensor([idx]), mean=torch.full((1, 4), 3.0),
        threshold=torch.full((1, 4), 0.3), retain=torch.tensor([retain]),
    )  # fmt: skip
    gamma = -0.5
    (x,), (y,) = block_outputs(tiny_sd, sae, features, multiplier=gamma, rule="ablate",
                               edit_path=path)  # fmt: skip
    half = x.shape[0] // 2
    assert torch.equal(x[:half], y[:half]), "the unconditional half stays untouched"
    tokens = cond_tokens(x)
    with torch.no_grad():
        a = sae.encode_dense(tokens)[:, idx]
        r = torch.tensor(retain)
        # The rule, written out: r + gamma (a - r) where a clears its threshold.
        a_new = torch.where(a > 0.3, r + gamma * (a - r), a)
        expected = tokens + (a_new - a) @ sae.W_dec[idx]
    got = cond_tokens(y)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    edited = (a > 0.3).any(dim=1)
    assert 0 < int(edited.sum()) < len(edited)
    assert torch.equal(got[~edited], tokens[~edited]), "unedited tokens keep their bits"
    # Unlike the published rule, gamma 0 is not the end of the scale: the latent lands on r.
    (_,), (y0,) = block_outputs(tiny_sd, sae, features, multiplier=0.0, rule="ablate",
                                edit_path=path)  # fmt: skip
    with torch.no_grad():
        a0 = torch.where(a > 0.3, r.expand_as(a), a)
        torch.testing.assert_close(
            cond_tokens(y0), tokens + (a0 - a) @ sae.W_dec[idx], atol=1e-5, rtol=1e-5
        )


def test_ablate_without_stored_retain_uses_zero(tiny_sd, sae) -> None:
    idx = [1, 5, 9]
    plain = ConceptFeatures.from_latents("cat", idx, mean=2.0, threshold=0.0)
    zeros = ConceptFeatures(
        "cat", indices=torch.tensor([idx]), mean=torch.full((1, 3), 2.0),
        threshold=torch.zeros(1, 3), retain=torch.zeros(1, 3),
    )  # fmt: skip
    _, (a,) = block_outputs(tiny_sd, sae, plain, multiplier=-1.0, rule="ablate")
    _, (b,) = block_outputs(tiny_sd, sae, zeros, multiplier=-1.0, rule="ablate")
    assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_anchor_writes_the_anchor_in_at_the_tokens_strength(tiny_sd, sae, path) -> None:
    idx, anchor_idx = [0, 4, 8], [2, 6]
    mu = torch.tensor([1.0, 2.0, 0.5])
    mu_anchor = torch.tensor([1.5, 0.7])
    target = ConceptFeatures(
        "cat", indices=torch.tensor([idx]), mean=mu[None], threshold=torch.full((1, 3), 0.2),
        retain=torch.zeros(1, 3),
    )  # fmt: skip
    anchor = ConceptFeatures.from_latents("dog", anchor_idx, mean=mu_anchor.tolist())
    features = target.with_anchor(anchor)
    assert features.meta["anchor"] == "dog"
    gamma = -2.0
    (x,), (y,) = block_outputs(tiny_sd, sae, features, multiplier=gamma, rule="anchor",
                               edit_path=path)  # fmt: skip
    tokens = cond_tokens(x)
    with torch.no_grad():
        dense = sae.encode_dense(tokens)
        a, g = dense[:, idx], dense[:, anchor_idx]
        hit = a > 0.2
        gate = hit.any(dim=1, keepdim=True)
        strength = ((a * mu).sum(1, keepdim=True) / (mu * mu).sum()).clamp_min(0)
        a_new = torch.where(hit, gamma * a, a)  # retain 0: r + gamma (a - r)
        g_new = torch.where(gate, torch.maximum(g, (1 - gamma) * strength * mu_anchor), g)
        expected = tokens + (a_new - a) @ sae.W_dec[idx] + (g_new - g) @ sae.W_dec[anchor_idx]
    got = cond_tokens(y)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert bool((g_new > g).any()), "the anchor latents were raised somewhere"
    assert torch.equal(got[~gate[:, 0]], tokens[~gate[:, 0]])


def test_anchor_rule_needs_an_anchor(tiny_sd, sae) -> None:
    features = ConceptFeatures.from_latents("cat", [0, 4], mean=1.0, threshold=0.0)
    # Refused when attached, before any sampling.
    with pytest.raises(ConfigError, match="^rule:"):
        attach(tiny_sd, sae, features, rule="anchor", multiplier=0.0)


def test_rules_change_the_image_and_spare_unrelated_prompts(tiny_sd, sae) -> None:
    base = sample(tiny_sd)
    fires = ConceptFeatures.from_latents("cat", list(range(0, 128, 4)), mean=1.0)
    silent = ConceptFeatures.from_latents("cat", [1, 2, 3], mean=1.0, threshold=1e9)
    for rule in ("ablate", "anchor"):
        anchor = ConceptFeatures.from_latents("dog", [1, 3, 5], mean=4.0)
        with erase(tiny_sd, sae, fires.with_anchor(anchor), multiplier=0.0, rule=rule) as h:
            erased = sample(tiny_sd)
        with erase(tiny_sd, sae, silent.with_anchor(anchor), multiplier=0.0, rule=rule):
            untouched = sample(tiny_sd)
        assert h.edited_tokens > 0
        assert np.abs(erased - base).mean() > 1e-3, rule
        assert np.array_equal(untouched, base), rule


def test_window_edits_only_the_chosen_part_of_the_schedule(tiny_sd, sae) -> None:
    features = ConceptFeatures.from_latents("cat", list(range(0, 128, 4)), mean=1.0)
    # Steps 0, 1, 2, 3 sit at positions 0, 1/3, 2/3, 1: the window 0.5..1 holds the last two.
    before, after = block_outputs(
        tiny_sd, sae, features, steps=4, multiplier=-5.0, window=[0.5, 1.0]
    )
    assert [torch.equal(b, a) for b, a in zip(before, after)] == [True, True, False, False]
    before, after = block_outputs(tiny_sd, sae, features, steps=4, multiplier=0.0,
                                  rule="ablate", window=[0.0, 0.0])  # fmt: skip
    assert [torch.equal(b, a) for b, a in zip(before, after)] == [False, True, True, True]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rule": "zero"}, "rule"),
        ({"rule": "ablate", "error_term": "paper"}, "error_term"),
        ({"window": [0.6, 0.2]}, "window"),
        ({"window": [0.0, 1.5]}, "window"),
        ({"window": [0.0, float("nan")]}, "window"),
        ({"window": [0.5]}, "window"),
    ],
)
def test_bad_rule_settings_name_their_field(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        EraseConfig(**kwargs)


def test_features_keep_retain_and_anchor_on_disk(tmp_path) -> None:
    target = ConceptFeatures(
        "cat", indices=torch.tensor([[3, 7], [1, -1]]), mean=torch.ones(2, 2),
        threshold=torch.zeros(2, 2), retain=torch.tensor([[0.1, 0.2], [0.3, 0.0]]),
    )  # fmt: skip
    anchor = ConceptFeatures.from_latents("dog", [9, 11], mean=[0.5, 0.25])
    path = target.with_anchor(anchor).save(tmp_path / "cat")
    back = ConceptFeatures.load(path)
    assert torch.equal(back.retain, target.retain)
    assert back.anchor_indices.tolist() == [[9, 11], [9, 11]]
    assert back.meta["anchor"] == "dog"
    assert back.retain_at(1).tolist() == pytest.approx([0.3])
    idx, mean = back.anchor_at(0)
    assert idx.tolist() == [9, 11] and mean.tolist() == [0.5, 0.25]
    with pytest.raises(ValueError, match="retain"):
        ConceptFeatures("x", torch.tensor([[1, 2]]), torch.ones(1, 2), torch.zeros(1, 2),
                        retain=torch.zeros(1, 3))  # fmt: skip


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_project_removes_the_component_along_the_decoder_directions(tiny_sd, sae, path) -> None:
    idx = [0, 4, 8]
    features = ConceptFeatures.from_latents("cat", idx, mean=1.0, threshold=0.2)
    gamma = -0.5
    (x,), (y,) = block_outputs(tiny_sd, sae, features, multiplier=gamma, rule="project",
                               edit_path=path)  # fmt: skip
    tokens = cond_tokens(x)
    with torch.no_grad():
        a = sae.encode_dense(tokens)[:, idx]
        hit = (a > 0.2).any(dim=1, keepdim=True)
        basis, _ = torch.linalg.qr(sae.W_dec[idx].T)
        component = ((tokens - sae.b_dec) @ basis) @ basis.T
        expected = torch.where(hit, tokens + (gamma - 1.0) * component, tokens)
        got = cond_tokens(y)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # After the edit the component along those directions is gamma times what it was.
        after = ((got - sae.b_dec) @ basis) @ basis.T
        torch.testing.assert_close(after[hit[:, 0]], gamma * component[hit[:, 0]],
                                   atol=1e-5, rtol=1e-4)  # fmt: skip
    assert 0 < int(hit.sum()) < len(hit)
    assert torch.equal(got[~hit[:, 0]], tokens[~hit[:, 0]])


def test_window_holds_on_the_dense_path(tiny_sd, sae) -> None:
    """The dense (compile-friendly) path reads the window from its step table: steps outside
    it stay bit-identical, and the steps inside get the sparse path's edit."""
    features = ConceptFeatures.from_latents("cat", list(range(0, 128, 4)), mean=1.0)
    kwargs = {"steps": 4, "multiplier": -5.0, "window": [0.5, 1.0]}
    before, dense = block_outputs(tiny_sd, sae, features, edit_path="dense", **kwargs)
    _, sparse = block_outputs(tiny_sd, sae, features, edit_path="sparse", **kwargs)
    assert [torch.equal(b, a) for b, a in zip(before, dense)] == [True, True, False, False]
    for d, s in zip(dense, sparse):
        torch.testing.assert_close(d, s, atol=1e-5, rtol=1e-5)
    # The published error term changes every token even without an edit; outside the
    # window it is not applied either.
    before, paper = block_outputs(
        tiny_sd, sae, features, edit_path="dense", error_term="paper", **kwargs
    )
    assert [torch.equal(b, a) for b, a in zip(before, paper)] == [True, True, False, False]


def test_window_on_the_dense_path_leaves_the_image_alone(tiny_sd, sae) -> None:
    base = sample(tiny_sd, steps=4)
    features = ConceptFeatures.from_latents("cat", list(range(0, 128, 4)), mean=1.0)
    # Positions of 4 steps: 0, 1/3, 2/3, 1; the window 0.4..0.6 holds none of them.
    with erase(tiny_sd, sae, features, multiplier=-5.0, window=[0.4, 0.6],
               edit_path="dense", warn_unedited=False) as erasure:  # fmt: skip
        outside = sample(tiny_sd, steps=4)
    with erase(tiny_sd, sae, features, multiplier=-5.0, edit_path="dense") as everywhere:
        inside = sample(tiny_sd, steps=4)
    assert erasure.calls == 4 and erasure.edited_tokens == 0
    assert np.array_equal(outside, base)
    assert everywhere.edited_tokens > 0 and np.abs(inside - base).mean() > 1e-3


def test_erasure_keeps_rule_and_window(tiny_sd, sae) -> None:
    features = ConceptFeatures.from_latents("cat", list(range(0, 128, 4)), mean=1.0)
    base = sample(tiny_sd)
    erasure = attach(tiny_sd, sae, features, multiplier=0.0, rule="ablate", window=[0.0, 0.5])
    try:
        assert (erasure.config.rule, erasure.config.window) == ("ablate", [0.0, 0.5])
        first = sample(tiny_sd)
        erasure.set_scale("cat", 1.0)  # ablate at gamma 1: a <- r + (a - r), no change
        same = sample(tiny_sd)
        erasure.set_scale("cat", -3.0)
        erasure.disable()
        off = sample(tiny_sd)
        erasure.enable()
        strong = sample(tiny_sd)
    finally:
        erasure.remove()
    assert np.abs(first - base).mean() > 1e-3
    assert np.array_equal(same, base)
    assert np.array_equal(off, base)
    assert np.abs(strong - first).mean() > 1e-4
    assert np.array_equal(sample(tiny_sd), base)


def test_rules_edit_a_denoiser_call_outside_the_loop(tiny_sd, sae) -> None:
    """A bare UNet call (an attack's gradient step) takes the row nearest its timestep; the
    window is read from the timestep's place in the training range."""
    unet = tiny_sd.unet
    torch.manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, 8, 8)
    text = torch.randn(2, 4, unet.config.cross_attention_dim)
    features = ConceptFeatures.from_latents("cat", list(range(0, 128, 4)), mean=1.0)

    def call(**kwargs) -> torch.Tensor:
        with torch.no_grad(), erase(tiny_sd, sae, features, warn_unedited=False, **kwargs):
            return unet(latents, torch.tensor(999), encoder_hidden_states=text).sample

    with torch.no_grad():
        base = unet(latents, torch.tensor(999), encoder_hidden_states=text).sample
    # Timestep 999 is the start of the schedule (position 0).
    assert not torch.equal(call(multiplier=0.0, rule="ablate"), base)
    assert torch.equal(call(multiplier=0.0, rule="ablate", window=[0.5, 1.0]), base)
    assert not torch.equal(call(multiplier=0.0, rule="ablate", window=[0.0, 0.5]), base)


def _two_concepts_per_step(rule: str) -> list[ConceptFeatures]:
    """Two concepts whose latents change from step to step and overlap (latent 8), each
    with retained values and, for ``anchor``, an anchor of its own."""
    first = ConceptFeatures(
        "cat", indices=torch.tensor([[0, 4, 8], [8, 12, -1], [16, 20, 24], [1, 5, 9]]),
        mean=torch.rand(4, 3, generator=torch.Generator().manual_seed(1)) + 0.5,
        threshold=torch.full((4, 3), 0.1), retain=torch.full((4, 3), 0.05),
    )  # fmt: skip
    second = ConceptFeatures(
        "dog", indices=torch.tensor([[8, 28], [32, 36], [40, 44], [48, 52]]),
        mean=torch.full((4, 2), 2.0), threshold=torch.full((4, 2), 0.2),
    )  # fmt: skip
    if rule == "anchor":
        first = first.with_anchor(ConceptFeatures.from_latents("owl", [2, 6], mean=[1.5, 0.7]))
        second = second.with_anchor(ConceptFeatures.from_latents("fox", [10], mean=3.0))
    return [first, second]


@pytest.mark.parametrize("rule", ["ablate", "anchor", "project"])
def test_dense_path_gives_the_sparse_edit_for_every_rule(tiny_sd, sae, rule) -> None:
    """The dense (compile-friendly) path reads every step's plan from its table: with two
    concepts whose latents change per step and overlap, inside a window, it edits as the
    sparse path does, and steps outside the window keep their bits."""
    features = _two_concepts_per_step(rule)
    kwargs = {"steps": 4, "multiplier": -1.5, "rule": rule, "window": [0.3, 1.0]}
    before, dense = block_outputs(tiny_sd, sae, features, edit_path="dense", **kwargs)
    _, sparse = block_outputs(tiny_sd, sae, features, edit_path="sparse", **kwargs)
    assert [torch.equal(b, a) for b, a in zip(before, dense)] == [True, False, False, False]
    for d, s in zip(dense, sparse):
        torch.testing.assert_close(d, s, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rule", ["ablate", "anchor", "project"])
def test_every_rule_compiles_to_one_graph_and_erases_as_eager(rule) -> None:
    """``fullgraph=True`` fails on any graph break: no rule leaves the compiled graph, and
    one graph serves every step (the step reaches it as a tensor)."""
    pipe, sae, _ = micro_attention_sd()
    per_step = ConceptFeatures(
        "c", indices=torch.tensor([[0, 3, 6], [9, 12, 15], [18, 21, 24]]),
        mean=torch.ones(3, 3), threshold=torch.zeros(3, 3), retain=torch.full((3, 3), 0.1),
    )  # fmt: skip
    if rule == "anchor":
        per_step = per_step.with_anchor(ConceptFeatures.from_latents("d", [1, 2], mean=2.0))

    def run() -> np.ndarray:
        out = pipe("a cat", num_inference_steps=3, guidance_scale=7.5, height=16, width=16,
                   generator=torch.Generator().manual_seed(0), output_type="latent").images
        return out.detach().numpy()  # fmt: skip

    plain = run()
    with erase(pipe, sae, per_step, multiplier=-2.0, rule=rule, edit_path="dense"):
        eager = run()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager_unet = pipe.unet
    pipe.unet = torch.compile(eager_unet, backend="aot_eager", fullgraph=True)
    erasure = attach(pipe, sae, per_step, multiplier=-2.0, rule=rule)
    try:
        compiled = run()
    finally:
        erasure.remove()
        pipe.unet = eager_unet
    assert np.abs(eager - plain).max() > 1e-4, "the edit changes the latents"
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
