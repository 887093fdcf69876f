from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from helpers.micro import micro_attention_sd

from saeuron.erasure.erase import EditCounts, EraseConfig, _EraseHook, attach, erase, timestep_row
from saeuron.erasure.features import ConceptFeatures
from saeuron.models.denoising import DenoiseState
from saeuron.models.hookpoints import resolve_module
from saeuron.models.tiny import build_tiny_sd
from saeuron.sae import Sae, SaeConfig
from saeuron.utils.config import ConfigError

HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture(scope="module")
def sae() -> Sae:
    torch.manual_seed(3)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    sae.meta["hookpoint"] = HOOK
    return sae


def many_latents(name: str = "cat", start: int = 0) -> ConceptFeatures:
    # A quarter of the latents with threshold 0: certain to fire on random weights.
    return ConceptFeatures.from_latents(name, list(range(start, 128, 4)), mean=1.0, threshold=0.0)


def sample(pipe, steps: int = 3, guidance: float = 7.5, prompt: str = "a cat") -> np.ndarray:
    out = pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return np.asarray(out.images)


def recorded(module: torch.nn.Module, store: list):
    return module.register_forward_hook(lambda m, i, o: store.append(o[0].detach().clone()))


def outputs_around_erase(pipe, sae, features, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The hooked block's output just before and just after the erasing hook, one step."""
    module = resolve_module(pipe, HOOK)
    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    first = recorded(module, before)
    try:
        with erase(pipe, sae, features, **kwargs):
            second = recorded(module, after)
            try:
                sample(pipe, steps=1)
            finally:
                second.remove()
    finally:
        first.remove()
    return before[0], after[0]


def test_erasing_nothing_is_bit_identical(tiny_sd, sae) -> None:
    base = sample(tiny_sd)
    with erase(tiny_sd, sae, []) as handle:
        empty = sample(tiny_sd)
    # Latents selected but never above threshold: the hook runs, no token is edited.
    silent = ConceptFeatures.from_latents("x", [1, 2, 3], mean=1.0, threshold=1e9)
    with erase(tiny_sd, sae, silent, multiplier=-50.0) as silent_handle:
        untouched = sample(tiny_sd)
    assert handle.calls == 3 and silent_handle.calls == 3
    assert silent_handle.edited_tokens == 0
    assert np.array_equal(base, empty)
    assert np.array_equal(base, untouched)


def test_erasing_a_concept_changes_the_image(tiny_sd, sae) -> None:
    base = sample(tiny_sd)
    with erase(tiny_sd, sae, many_latents(), multiplier=-20.0) as handle:
        erased = sample(tiny_sd)
    assert handle.edited_tokens > 0
    assert np.abs(base - erased).mean() > 0.01
    # And the model is itself again afterwards.
    assert np.array_equal(sample(tiny_sd), base)


def test_multiplier_one_is_the_identity_edit(tiny_sd, sae) -> None:
    base = sample(tiny_sd)
    with erase(tiny_sd, sae, many_latents(), multiplier=1.0) as handle:
        same = sample(tiny_sd)
    assert handle.edited_tokens > 0
    np.testing.assert_allclose(same, base, atol=1e-5)


def test_hook_is_removed_when_sampling_raises(tiny_sd, sae) -> None:
    module = resolve_module(tiny_sd, HOOK)
    hooks_before = (len(module._forward_hooks), len(tiny_sd.unet._forward_pre_hooks))

    def boom(pipe, step, timestep, kwargs):
        raise RuntimeError("user callback failed")

    with pytest.raises(RuntimeError, match="user callback failed"):
        with erase(tiny_sd, sae, many_latents(), multiplier=-20.0):
            tiny_sd("a cat", num_inference_steps=2, callback_on_step_end=boom)
    assert (len(module._forward_hooks), len(tiny_sd.unet._forward_pre_hooks)) == hooks_before


def test_exact_edit_matches_the_formula_and_spares_the_unconditional_half(tiny_sd, sae) -> None:
    features = ConceptFeatures.from_latents("cat", [0, 4, 8, 12], mean=1.0, threshold=0.0)
    gamma = -5.0
    before, after = outputs_around_erase(tiny_sd, sae, features, multiplier=gamma)
    x, y = before, after
    half = x.shape[0] // 2
    assert torch.equal(x[:half], y[:half]), "unconditional half must be untouched"
    tokens = x[half:].permute(0, 2, 3, 1).reshape(-1, 32)
    with torch.no_grad():
        dense = sae.encode_dense(tokens)
        idx = features.indices[0]
        a = dense[:, idx]
        a_new = torch.where(a > 0.0, gamma * 1.0 * a, a)
        expected = tokens + (a_new - a) @ sae.W_dec[idx]
    got = y[half:].permute(0, 2, 3, 1).reshape(-1, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Tokens with none of the latents active keep their exact bits.
    untouched = ~(a > 0).any(dim=1)
    assert untouched.any()
    assert torch.equal(got[untouched], tokens[untouched])


def test_exact_edit_with_thresholds_edits_only_tokens_above_them(tiny_sd, sae) -> None:
    # The hook encodes fully only tokens whose selected latents clear a threshold; the
    # result must equal the formula applied with the full encode to every token.
    idx = [0, 4, 8, 12]
    probe = ConceptFeatures.from_latents("cat", idx, mean=1.0, threshold=0.0)
    x, _ = outputs_around_erase(tiny_sd, sae, probe, multiplier=-5.0)
    half = x.shape[0] // 2
    tokens = x[half:].permute(0, 2, 3, 1).reshape(-1, 32)
    with torch.no_grad():
        a = sae.encode_dense(tokens)[:, idx]
    positive = a[a > 0]
    thresholds = [float(positive.quantile(q)) for q in (0.3, 0.6, 0.8, 0.9)]
    features = ConceptFeatures.from_latents("cat", idx, mean=2.0, threshold=thresholds)
    before, after = outputs_around_erase(tiny_sd, sae, features, multiplier=-3.0)
    assert torch.equal(before, x)
    thr = torch.tensor(thresholds)
    a_new = torch.where(a > thr, -3.0 * 2.0 * a, a)
    with torch.no_grad():
        expected = tokens + (a_new - a) @ sae.W_dec[idx]
    got = after[half:].permute(0, 2, 3, 1).reshape(-1, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    edited = (a > thr).any(dim=1)
    assert 0 < int(edited.sum()) < len(edited)  # some tokens edited, some spared
    assert torch.equal(got[~edited], tokens[~edited])


def test_paper_error_term_reproduces_the_published_form(tiny_sd, sae) -> None:
    before, after = outputs_around_erase(tiny_sd, sae, [], error_term="paper", guidance_half="both")
    tokens = before.permute(0, 2, 3, 1).reshape(-1, 32)
    with torch.no_grad():
        x_hat = sae.encode_dense(tokens) @ sae.W_dec + sae.b_dec
    expected = x_hat + (x_hat - tokens)
    got = after.permute(0, 2, 3, 1).reshape(-1, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, tokens, atol=1e-3), "the published form is not the identity"


def test_guidance_half_both_edits_every_row(tiny_sd, sae) -> None:
    before, after = outputs_around_erase(
        tiny_sd, sae, many_latents(), multiplier=-5.0, guidance_half="both"
    )
    assert not torch.equal(before[0], after[0])
    assert not torch.equal(before[1], after[1])


def test_without_guidance_the_whole_batch_is_conditional(tiny_sd, sae) -> None:
    base = sample(tiny_sd, guidance=1.0)
    with erase(tiny_sd, sae, many_latents(), multiplier=-20.0, guidance_half="cond") as handle:
        erased = sample(tiny_sd, guidance=1.0)
    assert handle.edited_tokens > 0
    assert not np.array_equal(base, erased)


def test_step_comes_from_the_pipeline_not_from_counting(tiny_sd, sae) -> None:
    # Different latents at each of 3 steps: a hook that counted calls would drift on the
    # second call within one context.
    per_step = ConceptFeatures(
        "c",
        indices=torch.tensor([[0, 4], [8, 12], [16, 20]]),
        mean=torch.ones(3, 2),
        threshold=torch.zeros(3, 2),
    )
    with erase(tiny_sd, sae, per_step, multiplier=-20.0):
        first = sample(tiny_sd)
        second = sample(tiny_sd)
    with erase(tiny_sd, sae, per_step, multiplier=-20.0):
        fresh = sample(tiny_sd)
    assert np.array_equal(first, second)
    assert np.array_equal(first, fresh)


def test_statistics_from_other_step_counts_map_by_position(tiny_sd, sae, caplog) -> None:
    features = ConceptFeatures(
        "c",
        indices=torch.arange(10).reshape(10, 1) * 4,
        mean=torch.ones(10, 1),
        threshold=torch.zeros(10, 1),
    )
    assert [features.stats_step(i, 4) for i in range(4)] == [0, 3, 6, 9]
    assert [features.stats_step(i, 10) for i in range(10)] == list(range(10))
    assert features.stats_step(0, 1) == 0
    # The hook's module logs it: listen to the erasure package, whatever ran before.
    with caplog.at_level(logging.INFO, logger="saeuron.erasure"):
        with erase(tiny_sd, sae, features, multiplier=-20.0):
            sample(tiny_sd, steps=4)
    assert "statistics from 10 steps mapped onto 4 sampling steps" in caplog.text


def test_several_concepts_with_their_own_scales(tiny_sd, sae) -> None:
    a, b = many_latents("a", 0), many_latents("b", 1)
    with erase(tiny_sd, sae, [a, b], multiplier={"a": -20.0, "b": 1.0}):
        a_only_via_dict = sample(tiny_sd)
    with erase(tiny_sd, sae, a, multiplier=-20.0):
        a_only = sample(tiny_sd)
    with erase(tiny_sd, sae, [a, b], multiplier=-20.0):
        both = sample(tiny_sd)
    # b at scale 1 is the identity edit, so the pair equals a alone.
    np.testing.assert_allclose(a_only_via_dict, a_only, atol=1e-5)
    assert np.abs(both - a_only).mean() > 1e-3


def test_overlapping_latents_are_edited_once_by_the_strongest_concept(tiny_sd, sae) -> None:
    strong = ConceptFeatures.from_latents("strong", [0, 4, 8], mean=2.0, threshold=0.0)
    weak = ConceptFeatures.from_latents("weak", [4, 8, 12], mean=0.5, threshold=0.0)

    hook = _EraseHook(
        sae,
        [weak, strong],
        {"weak": -10.0, "strong": -10.0},
        EraseConfig(),
        "output",
        DenoiseState(),
        EditCounts(HOOK, ["weak", "strong"]),
    )
    plan = hook.plan(0, 3)
    got = dict(zip(plan.indices.tolist(), plan.scale.tolist()))
    assert got == {0: -20.0, 4: -20.0, 8: -20.0, 12: -5.0}


def test_sdxl_without_guidance(tiny_sdxl) -> None:
    torch.manual_seed(4)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    features = many_latents()
    kwargs = dict(num_inference_steps=2, guidance_scale=0.0, output_type="np")
    base = tiny_sdxl("a cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    with erase(
        tiny_sdxl, sae, features, multiplier=-20.0, hookpoint="unet.up_blocks.0.attentions.1"
    ) as h:
        erased = tiny_sdxl("a cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert h.edited_tokens > 0
    assert np.abs(np.asarray(base) - np.asarray(erased)).mean() > 1e-3


def test_update_site_edits_the_block_update(tiny_sd, sae) -> None:
    base = sample(tiny_sd)
    with erase(tiny_sd, sae, many_latents(), multiplier=-20.0, activation_site="update") as h:
        erased = sample(tiny_sd)
    assert h.edited_tokens > 0 and not np.array_equal(base, erased)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"guidance_half": "uncond"}, "guidance_half"),
        ({"error_term": "approx"}, "error_term"),
        ({"activation_site": "input"}, "activation_site"),
        ({"multiplier": {"dog": -1.0}}, "multiplier"),
        ({"hookpoint": "unet.up_blocks.9.attentions.1"}, "hookpoint"),
        ({"hookpoint": "unet.up_blocks.1.attentions.2"}, "concepts"),
    ],
)
def test_validation_errors_name_the_field(tiny_sd, sae, kwargs, field) -> None:
    features = many_latents()
    features.meta["hookpoint"] = HOOK
    with pytest.raises(ConfigError, match=f"^{field}:"):
        with erase(tiny_sd, sae, features, **kwargs):
            pass


def test_validation_of_concepts(tiny_sd, sae) -> None:
    with pytest.raises(ConfigError, match="appear once"):
        with erase(tiny_sd, sae, [many_latents(), many_latents()]):
            pass
    too_big = ConceptFeatures.from_latents("x", [500])
    with pytest.raises(ConfigError, match="has 128"):
        with erase(tiny_sd, sae, too_big):
            pass
    bare = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    with pytest.raises(ConfigError, match="^hookpoint:"):
        with erase(tiny_sd, bare, ConceptFeatures.from_latents("x", [1])):
            pass


def test_attach_persists_until_removed_and_scales_change_between_calls(tiny_sd, sae) -> None:
    plain = sample(tiny_sd)
    erasure = attach(tiny_sd, sae, many_latents(), multiplier=-20.0)
    try:
        strong = sample(tiny_sd)
        assert np.abs(strong - plain).mean() > 1e-3 and erasure.edited_tokens > 0
        assert np.array_equal(sample(tiny_sd), strong)  # still attached, deterministic
        erasure.set_scale("cat", -2.0)
        assert erasure.scales == {"cat": -2.0}
        weak = sample(tiny_sd)
        assert not np.array_equal(weak, strong) and not np.array_equal(weak, plain)
        erasure.disable()
        assert np.array_equal(sample(tiny_sd), plain)  # hooks on, edit off: bit for bit
        erasure.enable()
        assert np.array_equal(sample(tiny_sd), weak)
        with pytest.raises(ConfigError, match="^concept: got 'dog'"):
            erasure.set_scale("dog", -1.0)
        with pytest.raises(ConfigError, match="multipliers.cat: got nan"):
            erasure.set_scale("cat", float("nan"))
    finally:
        erasure.remove()
    assert not erasure.attached
    erasure.remove()  # twice is harmless
    assert np.array_equal(sample(tiny_sd), plain)
    module = resolve_module(tiny_sd, HOOK)
    assert not module._forward_hooks and not tiny_sd.unet._forward_pre_hooks


# -- the two edit paths, precision, devices and the diffusers features users turn on ----------


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_both_edit_paths_give_the_formulas_edit(tiny_sd, sae, path) -> None:
    idx = [0, 4, 8, 12]
    x, _ = outputs_around_erase(tiny_sd, sae, ConceptFeatures.from_latents("c", idx))
    half = x.shape[0] // 2
    tokens = x[half:].permute(0, 2, 3, 1).reshape(-1, 32)
    with torch.no_grad():
        a = sae.encode_dense(tokens)[:, idx]
    thresholds = [float(a[a > 0].quantile(q)) for q in (0.3, 0.6, 0.8, 0.9)]
    features = ConceptFeatures.from_latents("c", idx, mean=2.0, threshold=thresholds)
    before, after = outputs_around_erase(tiny_sd, sae, features, multiplier=-3.0, edit_path=path)
    thr = torch.tensor(thresholds)
    # The formula in float64, every token fully encoded.
    with torch.no_grad():
        t64, a64 = tokens.double(), a.double()
        expected = t64 + (torch.where(a > thr, -6.0 * a64, a64) - a64) @ sae.W_dec[idx].double()
    got = after[half:].permute(0, 2, 3, 1).reshape(-1, 32)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    spared = ~(a > thr).any(dim=1)
    assert spared.any() and torch.equal(got[spared], tokens[spared])
    assert torch.equal(before[:half], after[:half])


def test_both_edit_paths_sample_the_same_image(tiny_sd, sae) -> None:
    images = {}
    for path in ("sparse", "dense"):
        for error in ("exact", "paper"):
            with erase(tiny_sd, sae, many_latents(), multiplier=-20.0, edit_path=path,
                       error_term=error) as handle:  # fmt: skip
                images[path, error] = sample(tiny_sd)
            assert handle.edited_tokens > 0
    for error in ("exact", "paper"):
        np.testing.assert_allclose(images["sparse", error], images["dense", error], atol=1e-5)


def test_a_call_outside_the_loop_uses_the_row_nearest_its_timestep(tiny_sd, sae) -> None:

    per_row = ConceptFeatures(
        "c",
        indices=torch.tensor([[0, 4], [8, 12], [16, 20]]),
        mean=torch.ones(3, 2),
        threshold=torch.zeros(3, 2),
        timesteps=torch.tensor([900.0, 500.0, 100.0]),
    )
    assert [timestep_row(per_row, t, 1000) for t in (999, 720, 480, 0)] == [0, 0, 1, 2]
    bare = ConceptFeatures(**{**per_row.__dict__, "timesteps": None})
    assert [timestep_row(bare, t, 1000) for t in (999, 500, 0)] == [0, 1, 2]
    row_1 = ConceptFeatures.from_latents("c", [8, 12])
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    tiny_sd.scheduler.set_timesteps(3)
    outs = []
    for features in (per_row, row_1):
        with torch.no_grad(), erase(tiny_sd, sae, features, multiplier=-20.0,
                                    guidance_half="both") as handle:  # fmt: skip
            outs.append(tiny_sd.unet(x, torch.tensor(480), encoder_hidden_states=context).sample)
        assert handle.edited_tokens > 0
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_pipelines_erase_with_the_sae_in_their_dtype(sae, dtype) -> None:

    pipe = build_tiny_sd().to(dtype=dtype)
    kwargs = dict(num_inference_steps=3, guidance_scale=7.5, output_type="np")
    try:
        base = pipe("a cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    except RuntimeError as err:  # a CPU kernel missing for this dtype: not ours to test
        pytest.skip(f"the stock pipeline does not run in {dtype} on this CPU: {err}")
    with erase(pipe, sae, many_latents(), multiplier=-20.0) as handle:
        erased = pipe("a cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert handle.edited_tokens > 0
    assert np.isfinite(erased).all() and np.abs(erased - base).mean() > 1e-3
    # The SAE object is untouched; the hook computed with a copy in the activation's dtype.
    assert sae.dtype == torch.float32 and (torch.device("cpu"), dtype) in handle._hook._weights


def test_attention_processors_do_not_change_the_edit(sae) -> None:

    pipe = build_tiny_sd()
    images = []
    for processor in (AttnProcessor2_0(), AttnProcessor()):  # SDPA, then the classic one
        pipe.unet.set_attn_processor(processor)
        with erase(pipe, sae, many_latents(), multiplier=-20.0) as handle:
            images.append(sample(pipe))
        assert handle.edited_tokens > 0
    np.testing.assert_allclose(images[0], images[1], atol=1e-4)


def test_a_users_step_callback_works_with_the_erasure_attached(tiny_sd, sae) -> None:
    seen: list[int] = []

    def callback(pipe, i, t, kwargs):
        seen.append(i)
        return {"latents": kwargs["latents"] * 1.0}  # callbacks may hand latents back

    with erase(tiny_sd, sae, many_latents(), multiplier=-20.0) as handle:
        plain = sample(tiny_sd)
        with_callback = tiny_sd("a cat", num_inference_steps=3, guidance_scale=7.5,
                                generator=torch.Generator().manual_seed(0), output_type="np",
                                callback_on_step_end=callback,
                                callback_on_step_end_tensor_inputs=["latents"]).images  # fmt: skip
    assert seen == [0, 1, 2] and handle.edited_tokens > 0
    assert np.array_equal(plain, with_callback)


def test_model_cpu_offload_erases_as_without(sae) -> None:

    reference = build_tiny_sd()
    with erase(reference, sae, many_latents(), multiplier=-20.0):
        expected = sample(reference)
    pipe = build_tiny_sd()
    pipe.enable_model_cpu_offload(device="cpu")
    with erase(pipe, sae, many_latents(), multiplier=-20.0) as handle:
        got = sample(pipe)
    assert handle.edited_tokens > 0
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_two_pipelines_erase_at_once_in_one_process(sae) -> None:
    import threading

    pipes = [build_tiny_sd(seed=0), build_tiny_sd(seed=1)]
    concepts = [many_latents("a", 0), many_latents("b", 1)]
    alone = []
    for pipe, concept in zip(pipes, concepts):
        with erase(pipe, sae, concept, multiplier=-20.0):
            alone.append(sample(pipe, steps=4))
    together: list[np.ndarray | None] = [None, None]
    erasures = [attach(p, sae, c, multiplier=-20.0) for p, c in zip(pipes, concepts)]
    try:

        def run(i: int) -> None:
            together[i] = sample(pipes[i], steps=4)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for erasure in erasures:
            erasure.remove()
    for i in range(2):
        assert together[i] is not None and np.array_equal(together[i], alone[i])
    assert not np.array_equal(alone[0], alone[1])


@pytest.mark.slow  # 25 s of tracing; the compile test below runs in the default tier
def test_the_hooked_unet_has_no_graph_break_on_the_dense_path() -> None:
    pipe, sae, features = micro_attention_sd()
    pipe.scheduler.set_timesteps(3)
    pipe._guidance_scale = 7.5  # what the tracker reads for the CFG batch
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    t = pipe.scheduler.timesteps[1]
    breaks = {}
    for path in ("auto", "sparse"):
        torch._dynamo.reset()
        with erase(pipe, sae, features, multiplier=-20.0, edit_path=path):
            explained = torch._dynamo.explain(pipe.unet)(x, t, encoder_hidden_states=context)
        breaks[path] = explained.graph_break_count
    # Under compilation 'auto' takes the dense path; the sparse one asks the data for shapes.
    assert breaks == {"auto": 0, "sparse": breaks["sparse"]} and breaks["sparse"] > 0


@pytest.mark.parametrize(
    "compile_first", [True, pytest.param(False, marks=pytest.mark.slow)]
)
def test_compiled_unet_erases_as_eager_with_one_graph_for_every_step(compile_first) -> None:
    pipe, sae, features = micro_attention_sd()
    per_step = ConceptFeatures(
        "c",
        indices=torch.tensor([[0, 3, 6], [9, 12, 15], [18, 21, 24]]),
        mean=torch.ones(3, 3),
        threshold=torch.zeros(3, 3),
    )

    def run(steps: int) -> np.ndarray:
        out = pipe(
            "a cat",
            num_inference_steps=steps,
            guidance_scale=7.5,
            height=16,
            width=16,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).images
        return out.detach().numpy()  # fmt: skip

    with erase(pipe, sae, per_step, multiplier=-20.0):
        eager = run(3)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager_unet = pipe.unet
    if compile_first:  # diffusers' recipe: compile, then attach
        pipe.unet = torch.compile(eager_unet, backend="aot_eager", fullgraph=True)
        erasure = attach(pipe, sae, per_step, multiplier=-20.0)
    else:
        erasure = attach(pipe, sae, per_step, multiplier=-20.0)
        pipe.unet = torch.compile(eager_unet, backend="aot_eager", fullgraph=True)
    try:
        compiled = run(3)
        again = run(3)
    finally:
        erasure.remove()
        pipe.unet = eager_unet
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    assert np.array_equal(compiled, again)
    # Six calls at three steps, one graph: the step reaches it as a tensor, not a constant.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_a_block_that_edits_nothing_warns_once_and_only_then(tiny_sd, sae, caplog) -> None:
    silent = ConceptFeatures.from_latents("silent", [1, 2], mean=1.0, threshold=1e9)
    with caplog.at_level(logging.WARNING, logger="saeuron.erasure.erase"):
        with erase(tiny_sd, sae, silent, multiplier=-20.0) as erasure:
            sample(tiny_sd, steps=2)
    assert erasure.calls == 2 and erasure.edited_tokens == 0
    assert "nothing was erased: the latents of 'silent' never cleared their thresholds" in (
        caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="saeuron.erasure.erase"):
        with erase(tiny_sd, sae, silent, multiplier=-20.0, warn_unedited=False):
            sample(tiny_sd, steps=2)
        with erase(tiny_sd, sae, many_latents(), multiplier=-20.0) as erasure:
            sample(tiny_sd, steps=2)
        with erase(tiny_sd, sae, silent, multiplier=-20.0):
            pass  # the pipeline never ran: nothing to say
    assert erasure.edited_tokens > 0
    assert "nothing was erased" not in caplog.text


def test_a_compiled_unet_that_ran_before_the_erasure_still_erases() -> None:
    """torch.compile does not guard on module hooks: without a fresh compile, a graph traced
    before ``attach`` would keep sampling unerased, and one traced after it would keep
    erasing once the erasure is removed."""
    pipe, sae, features = micro_attention_sd()

    def run() -> np.ndarray:
        out = pipe("a cat", num_inference_steps=2, guidance_scale=7.5, height=16, width=16,
                   generator=torch.Generator().manual_seed(0), output_type="latent").images
        return out.detach().numpy()  # fmt: skip

    plain = run()
    with erase(pipe, sae, features, multiplier=-20.0):
        erased = run()
    assert np.abs(erased - plain).max() > 1e-3
    torch._dynamo.reset()
    eager_unet = pipe.unet
    pipe.unet = torch.compile(eager_unet, backend="aot_eager")
    try:
        np.testing.assert_allclose(run(), plain, atol=1e-5)
        with erase(pipe, sae, features, multiplier=-20.0):
            np.testing.assert_allclose(run(), erased, atol=1e-5)
        np.testing.assert_allclose(run(), plain, atol=1e-5)
    finally:
        pipe.unet = eager_unet
