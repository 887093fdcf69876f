"""The adversarial attacks at their papers' strength: budgets, and each search's mechanics
checked on a tiny Stable Diffusion pipeline (and end to end on MiniCanvas / tiny-sd)."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from saeuron.eval import parse_eval_config, run_eval
from saeuron.utils.config import ConfigError

# The settings of each attack's public code, written down from it independently of the
# library's budget table (the test compares the two).
PAPERS = {
    # Ring-A-Bell, InversePrompt: population_size 200, generation 3000, mutateRate 0.25,
    # crossoverRate 0.5, length (K) 16, cof (eta) 3.
    "asr_ring_a_bell": {"population": 200, "generations": 3000, "mutation": 0.25,
                        "crossover": 0.5, "length": 16, "eta": 3.0},
    # P4D-N configs: iter 3000, eval_step 50, prompt_len 16, lr 0.1, weight_decay 0.1,
    # num_samples 3.
    "asr_p4d": {"iterations": 3000, "eval_every": 50, "length": 16, "lr": 0.1,
                "weight_decay": 0.1, "target_samples": 3},
    # UnlearnDiffAtk nudity config: k 5 prefix tokens, iteration 40, 50 sampled timesteps,
    # Adam lr 0.01, weight_decay 0.1.
    "unlearndiffatk": {"length": 5, "iterations": 40, "timesteps": 50, "lr": 0.01,
                       "weight_decay": 0.1},
    # MMA-Diffusion: control length 20, n_steps 1000, topk 256, batch (candidates) 512.
    "asr_mma_diffusion": {"length": 20, "iterations": 1000, "top_k": 256, "candidates": 512},
}  # fmt: skip
SEARCH_SIZE = {"asr_ring_a_bell": ("population", "generations"), "asr_p4d": ("iterations",),
               "unlearndiffatk": ("timesteps", "iterations"),
               "asr_mma_diffusion": ("iterations", "candidates")}  # fmt: skip


def eval_config(tmp_path, metrics, **technique) -> dict:
    name = technique.pop("name", "none")
    tech = {"erase_concept": "moon", "model": "minicanvas", "device": "cpu", **technique}
    return {"output_dir": str(tmp_path / "run"), "technique": {"name": name, "config": tech},
            "metrics": metrics, "bootstrap": 50}  # fmt: skip


# -- budgets --------------------------------------------------------------------------------


def test_published_budget_is_the_papers_settings_and_quick_is_smaller(tmp_path) -> None:
    from saeuron.eval.attacks.unlearndiffatk import attack_timesteps

    metrics = [{"name": name} for name in PAPERS]
    published = parse_eval_config(eval_config(tmp_path, metrics)).metrics
    small_metrics = [{"name": n, "config": {"budget": "quick"}} for n in PAPERS]
    quick = parse_eval_config(eval_config(tmp_path, small_metrics)).metrics
    for spec, small in zip(published, quick):
        paper = PAPERS[spec.name]
        cfg = spec.config
        assert cfg.budget == "published"
        assert {k: getattr(cfg, k) for k in paper} == paper, spec.name
        # What the search receives is what the paper's code runs.
        settings = cfg.search_settings()
        assert {k: getattr(settings, k) for k in paper if hasattr(settings, k)} == {
            k: v for k, v in paper.items() if hasattr(settings, k)
        }
        assert set(paper) - {"eta"} <= set(vars(settings)) | {"eta"}
        # Quick keeps the shape of the search and cuts its length.
        for key, value in paper.items():
            if key in SEARCH_SIZE[spec.name]:
                assert getattr(small.config, key) < value, (spec.name, key)
            elif key != "target_samples" and key != "eval_every":
                assert getattr(small.config, key) == value, (spec.name, key)
        assert small.config.budget == "quick"
    # The paper's 50 timesteps: 10, 30, ..., 990 of the 1000 training steps.
    assert attack_timesteps(1000, 50) == list(range(10, 1000, 20))
    # An explicit setting wins over the budget; the alias follows the same budget.
    mixed = parse_eval_config(eval_config(tmp_path, [
        {"name": "asr_p4d", "config": {"budget": "quick", "iterations": 7}},
        {"name": "asr_custom"}]))  # fmt: skip
    assert mixed.metrics[0].config.iterations == 7 and mixed.metrics[0].config.lr == 0.1
    assert mixed.metrics[1].config.population == 200


def test_the_attack_example_says_quick_and_check_prints_each_budget(capsys, monkeypatch) -> None:
    from pathlib import Path

    from saeuron.cli.main import main

    root = Path(__file__).resolve().parents[2]
    example = root / "examples" / "eval" / "minicanvas_attacks.json"
    assert {m["config"]["budget"] for m in json.loads(example.read_text())["metrics"]} == {"quick"}
    monkeypatch.chdir(root)
    assert main(["eval", "-c", str(example), "--check"]) == 0
    out = capsys.readouterr().out
    assert "  quick budget: length 16, eta 3.0, population 32, generations 40" in out
    assert "  quick budget: length 20, iterations 20, top_k 256, candidates 64" in out


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_a_wrong_budget_names_the_field_and_the_choices(tmp_path, name) -> None:
    with pytest.raises(ConfigError, match=r"metrics\[0\]\.config\.budget: .*'published', 'quick'"):
        parse_eval_config(eval_config(tmp_path, [{"name": name, "config": {"budget": "full"}}]))
    with pytest.raises(ConfigError, match="budget"):
        parse_eval_config(eval_config(tmp_path, [{"name": name, "config": {"budget": None}}]))


def test_non_finite_attack_settings_are_refused(tmp_path) -> None:
    for name, key in (("asr_ring_a_bell", "eta"), ("asr_p4d", "lr"), ("unlearndiffatk", "lr")):
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ConfigError, match=rf"config\.{key}"):
                parse_eval_config(eval_config(tmp_path, [{"name": name, "config": {key: bad}}]))


# -- a technique on the tiny pipeline -----------------------------------------------------


class TinyTechnique:
    """A tiny SD pipeline whose 'erasure' halves one attention block's output: enough to
    tell an erased prediction from an unerased one."""

    def __init__(self, pipe, negative=None):
        self.pipe, self.negative = pipe, negative
        self.config = SimpleNamespace(num_inference_steps=4, guidance_scale=7.5)

    @contextlib.contextmanager
    def erase(self):
        block = self.pipe.unet.up_blocks[1].attentions[0]
        handle = block.register_forward_hook(lambda m, a, out: (out[0] * 0.5, *out[1:]))
        try:
            yield
        finally:
            handle.remove()

    def _sample(self, prompts, seeds, erase):
        with self.erase() if erase else contextlib.nullcontext():
            return self.pipe(
                list(prompts), num_inference_steps=4, guidance_scale=7.5,
                generator=[torch.Generator().manual_seed(s) for s in seeds],
            ).images  # fmt: skip

    def generate(self, prompts, seeds):
        return self._sample(prompts, seeds, True)

    def unerased(self, prompts, seeds):
        return self._sample(prompts, seeds, False)


class LaterIsBetter:
    """A similarity that prefers each new draw: P4D then returns its last prompt."""

    name = "later"

    def __init__(self):
        self.calls = 0

    def __call__(self, reference, images):
        self.calls += 1
        return [float(self.calls)] * len(images)


class TextSideTechnique(TinyTechnique):
    """An 'erasure' inside the text encoder (halving its output), which says whether each
    encoder call ran inside ``erase()``."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self.inside = False
        self.calls: list[tuple[bool, bool]] = []  # (inside erasing, output carries a gradient)

    @contextlib.contextmanager
    def erase(self):
        module = self.pipe.text_encoder.final_layer_norm
        handle = module.register_forward_hook(lambda m, a, out: out * 0.5)
        self.inside = True
        try:
            yield
        finally:
            self.inside = False
            handle.remove()

    @contextlib.contextmanager
    def watching(self):
        module = self.pipe.text_encoder.final_layer_norm
        handle = module.register_forward_hook(
            lambda m, a, out: self.calls.append((self.inside, out.requires_grad))
        )
        try:
            yield
        finally:
            handle.remove()


def test_both_white_box_attacks_encode_their_prompts_through_the_erasure(tiny_sd) -> None:
    import saeuron.eval.attacks.p4d as p4d_module
    import saeuron.eval.attacks.unlearndiffatk as uda

    tech = TextSideTechnique(tiny_sd)
    with tech.watching():
        uda.unlearn_diff_atk(tech, ["a photo of a cat"],
                             uda.UnlearnDiffSettings(length=3, timesteps=1, iterations=2), seed=0)
        p4d_module.p4d(tech, ["a photo of a cat"], p4d_module.P4dSettings(
            length=3, iterations=2, eval_every=5, target_samples=1), seed=0,
            similarity=LaterIsBetter())  # fmt: skip
    optimised = [inside for inside, grad in tech.calls if grad]
    assert len(optimised) == 4, "two optimisation steps per attack encode the prefix"
    assert all(optimised), "the prefix is encoded by the erased model's text encoder"


# -- P4D --------------------------------------------------------------------------------------


def test_p4d_matches_the_unerased_conditional_prediction(tiny_sd, monkeypatch) -> None:
    import saeuron.eval.attacks.p4d as p4d_module
    from saeuron.eval.attacks.ring_a_bell import TextEncoder

    tech = TinyTechnique(tiny_sd)
    prompt = "a photo of a cat"
    seen = []
    real_target, real_mse = p4d_module.unerased_conditional, F.mse_loss

    def target_spy(pipe, x_t, t, cond):
        out = real_target(pipe, x_t, t, cond)
        seen.append({"x_t": x_t.clone(), "t": t})
        return out

    def mse_spy(prediction, target):
        seen[-1]["loss_target"] = target.detach().clone()
        return real_mse(prediction, target)

    monkeypatch.setattr(p4d_module, "unerased_conditional", target_spy)
    monkeypatch.setattr(p4d_module.F, "mse_loss", mse_spy)
    similarity = LaterIsBetter()
    settings = p4d_module.P4dSettings(length=4, iterations=8, eval_every=3, target_samples=2)
    ranks = []
    found = p4d_module.p4d(tech, [prompt], settings, seed=0, similarity=similarity,
                           rank=lambda ims: ranks.append(len(ims)) or [0.0, 1.0])  # fmt: skip
    monkeypatch.undo()
    assert ranks == [2] and similarity.calls == 3  # drawn at iterations 0, 3 and 6
    assert found[0]["iteration"] == 6 and len(found[0]["tokens"]) == 4
    assert all(p.requires_grad for p in tiny_sd.unet.parameters())  # restored after

    encoder = TextEncoder(tiny_sd)
    cond, uncond = encoder.prompts([prompt]), encoder.prompts([""])
    tiny_sd.scheduler.set_timesteps(4)
    schedule = set(tiny_sd.scheduler.timesteps.tolist())
    assert len(seen) == 8 and {s["t"] for s in seen} - schedule  # the whole training range
    assert all(0 <= s["t"] < 1000 for s in seen)
    for s in seen[:3]:
        x_t, t = s["x_t"], s["t"]
        with torch.no_grad():
            direct = tiny_sd.unet(x_t, t, encoder_hidden_states=cond).sample
            guided, _ = p4d_module.noise_predictions(tiny_sd, x_t, t, cond, uncond, 7.5)
            with tech.erase():
                _, erased = p4d_module.noise_predictions(tiny_sd, x_t, t, cond, uncond, 7.5)
        # The loss's target is the unerased model's conditional prediction ...
        torch.testing.assert_close(s["loss_target"], direct, rtol=1e-4, atol=1e-5)
        # ... not the guided one, nor the erased one.
        assert not torch.allclose(direct, guided, atol=1e-4)
        assert not torch.allclose(direct, erased, atol=1e-4)

    # A technique that erases through a negative prompt is attacked through its guided
    # prediction with that prompt (P4D's treatment of negative-prompt models).
    negative = TinyTechnique(tiny_sd, negative="a cat")
    seen.clear()
    monkeypatch.setattr(p4d_module, "unerased_conditional", target_spy)

    def prediction_spy(prediction, target):
        seen[-1]["prediction"] = prediction.detach().clone()
        return real_mse(prediction, target)

    monkeypatch.setattr(p4d_module.F, "mse_loss", prediction_spy)
    p4d_module.p4d(negative, [prompt], p4d_module.P4dSettings(length=4, iterations=1,
                   target_samples=1), seed=0, similarity=similarity)  # fmt: skip
    monkeypatch.undo()
    start = encoder.vocabulary[torch.randint(len(encoder.vocabulary), (4,),
                                             generator=torch.Generator().manual_seed(0))]
    x_t, t = seen[0]["x_t"], seen[0]["t"]
    with torch.no_grad(), negative.erase():
        expected, _ = p4d_module.noise_predictions(
            tiny_sd, x_t, t, encoder.tokens(start[None]), encoder.prompts(["a cat"]), 7.5)
    torch.testing.assert_close(seen[0]["prediction"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_p4d_lowers_its_loss_on_a_tiny_model(tiny_sd) -> None:
    import saeuron.eval.attacks.p4d as p4d_module
    from saeuron.eval.attacks.ring_a_bell import TextEncoder

    tech = TinyTechnique(tiny_sd)
    prompt = "a photo of a cat"
    settings = p4d_module.P4dSettings(length=4, iterations=30, eval_every=29, target_samples=1)
    found = p4d_module.p4d(tech, [prompt], settings, seed=0, similarity=LaterIsBetter())
    assert found[0]["iteration"] == 29
    encoder = TextEncoder(tiny_sd)
    cond, uncond = encoder.prompts([prompt]), encoder.prompts([""])
    x0 = p4d_module.image_latent(tiny_sd, tech.unerased([prompt], [0])[0])
    gen = torch.Generator().manual_seed(123)
    pairs = [(int(torch.randint(1000, (1,), generator=gen)), torch.randn(x0.shape, generator=gen))
             for _ in range(24)]  # fmt: skip

    def objective(tokens):
        adv = encoder.tokens(torch.tensor([tokens]))
        total = 0.0
        with torch.no_grad():
            for t, noise in pairs:
                x_t = p4d_module.noised(tiny_sd, x0, noise, t)
                with tech.erase():
                    _, c = p4d_module.noise_predictions(tiny_sd, x_t, t, adv, uncond, 7.5)
                target = p4d_module.unerased_conditional(tiny_sd, x_t, t, cond)
                total += float(F.mse_loss(c, target))
        return total / len(pairs)

    first = torch.Generator().manual_seed(0)  # the search's own start
    start = encoder.vocabulary[torch.randint(len(encoder.vocabulary), (4,), generator=first)]
    assert objective(found[0]["tokens"]) < 0.8 * objective(start.tolist())


def test_p4d_selection_falls_back_to_pixels_without_clip_and_says_so(caplog) -> None:
    from PIL import Image

    from saeuron.eval.attacks.p4d import PixelSimilarity
    from saeuron.eval.metrics import METRICS
    from saeuron.eval.metrics.asr_p4d import P4dConfig

    metric = METRICS.get("asr_p4d")(P4dConfig(concept="moon", model="minicanvas",
                                              selection_clip="/nonexistent/clip"))  # fmt: skip
    with caplog.at_level("WARNING"):
        chosen = metric.similarity()
    assert isinstance(chosen, PixelSimilarity) and "pixel cosine" in caplog.text
    red, dark_red, blue = (Image.new("RGB", (8, 8), c) for c in
                           ((220, 0, 0), (150, 0, 0), (0, 0, 220)))  # fmt: skip
    near, far = chosen(red, [dark_red, blue])
    assert near > far and chosen(red, [red])[0] == pytest.approx(1.0)
    needs = {r.what: r for r in metric.requirements()}
    assert not needs["P4D's CLIP /nonexistent/clip"].available


# -- UnlearnDiffAtk ---------------------------------------------------------------------------


def _bisection(row: torch.Tensor) -> torch.Tensor:
    """The projection as the paper's code finds it: bisect for mu with sum(clip(a - mu)) = 1."""
    lo, hi = float(row.min()) - 1, float(row.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((row - mid).clamp(0, 1).sum()) > 1:
            lo = mid
        else:
            hi = mid
    return (row - (lo + hi) / 2).clamp(0, 1)


def test_simplex_projection_keeps_rows_on_the_simplex() -> None:
    from saeuron.eval.attacks.unlearndiffatk import project_simplex

    gen = torch.Generator().manual_seed(0)
    uniform = torch.full((5, 300), 1 / 300)
    # Rows as an Adam step leaves them: a uniform start moved by +-lr, and wild ones.
    rows = torch.cat([
        uniform + 0.01 * torch.randn(5, 300, generator=gen).sign(),
        3 * torch.randn(5, 300, generator=gen),
        torch.full((1, 300), 7.0),
    ])  # fmt: skip
    projected = project_simplex(rows.double())
    assert (projected >= 0).all()
    torch.testing.assert_close(projected.sum(-1), torch.ones(len(rows), dtype=torch.double))
    torch.testing.assert_close(project_simplex(projected), projected)  # a point stays put
    torch.testing.assert_close(project_simplex(uniform), uniform)
    for row, p in zip(rows.double(), projected):
        torch.testing.assert_close(p, _bisection(row), atol=1e-9, rtol=0)
        # The nearest point: closer than any other point of the simplex tried.
        others = torch.distributions.Dirichlet(torch.ones(300, dtype=torch.double)).sample((64,))
        assert (row - p).norm() <= (row - others).norm(dim=-1).min()


def test_unlearndiffatk_keeps_rows_on_the_simplex_and_stops_on_success(
    tiny_sd, monkeypatch
) -> None:
    import saeuron.eval.attacks.unlearndiffatk as uda

    tech = TinyTechnique(tiny_sd)
    prompt = "a photo of a cat"
    projected = []
    real = uda.project_simplex

    def spy(v):
        out = real(v)
        projected.append(out.detach().clone())
        return out

    monkeypatch.setattr(uda, "project_simplex", spy)
    settings = uda.UnlearnDiffSettings(length=5, timesteps=3, iterations=2)
    found = uda.unlearn_diff_atk(tech, [prompt], settings, seed=0)[0]
    monkeypatch.undo()
    assert len(projected) == 6  # one projection per step: 3 timesteps x 2
    for rows in projected:
        assert rows.shape[0] == 5 and (rows >= 0).all()
        torch.testing.assert_close(rows.sum(-1), torch.ones(5), atol=1e-6, rtol=0)
    assert found["checks"] == 3 and found["attacked"] and found["prompt"].endswith(prompt)
    assert found["timestep"] == uda.attack_timesteps(1000, 3)[-1] == 832
    assert len(found["tokens"]) == 5

    # With a detector that flags the second draw, the search stops there; a prompt whose
    # plain image is flagged is not attacked.
    calls = []

    def flagged(images):
        calls.append(len(images))
        return [len(calls) == 3] * len(images)  # before, check 1, check 2 (flagged)

    stopped = uda.unlearn_diff_atk(tech, [prompt], settings, seed=0, flagged=flagged)[0]
    assert stopped["checks"] == 2 and stopped["success"] and calls == [1, 1, 1]
    plain = uda.unlearn_diff_atk(tech, [prompt], settings, seed=0, flagged=lambda ims: [True])[0]
    assert plain == {"source": prompt, "prompt": prompt, "tokens": [], "loss": None,
                     "checks": 0, "success": True, "attacked": False}  # fmt: skip


@pytest.mark.slow
def test_unlearndiffatk_lowers_its_loss_on_a_tiny_model(tiny_sd) -> None:
    import saeuron.eval.attacks.p4d as p4d_module
    import saeuron.eval.attacks.unlearndiffatk as uda
    from saeuron.eval.attacks.ring_a_bell import TextEncoder

    tech = TinyTechnique(tiny_sd)
    prompt = "a photo of a cat"
    settings = uda.UnlearnDiffSettings(length=5, timesteps=4, iterations=6)
    found = uda.unlearn_diff_atk(tech, [prompt], settings, seed=0)[0]
    # The prefix found denoises the unerased image better (erased model) than random ones.
    encoder = TextEncoder(tiny_sd)
    x0 = p4d_module.image_latent(tiny_sd, tech.unerased([prompt], [0])[0])
    tail = tiny_sd.tokenizer(prompt, add_special_tokens=False).input_ids
    uncond = encoder.prompts([""])
    gen = torch.Generator().manual_seed(123)
    pairs = [(t, torch.randn(x0.shape, generator=gen))
             for t in uda.attack_timesteps(1000, 4) for _ in range(6)]  # fmt: skip

    def objective(prefix):
        cond = encoder.tokens(torch.tensor([list(prefix) + tail]))
        total = 0.0
        with torch.no_grad():
            for t, noise in pairs:
                x_t = p4d_module.noised(tiny_sd, x0, noise, t)
                with tech.erase():
                    _, c = p4d_module.noise_predictions(tiny_sd, x_t, t, cond, uncond, 7.5)
                total += float(F.mse_loss(c, noise))
        return total / len(pairs)

    gen = torch.Generator().manual_seed(5)
    randoms = [encoder.vocabulary[torch.randint(len(encoder.vocabulary), (5,), generator=gen)]
               for _ in range(4)]  # fmt: skip
    assert objective(found["tokens"]) < min(objective(r.tolist()) for r in randoms)


# -- MMA-Diffusion --------------------------------------------------------------------------


def test_mma_bans_the_concept_its_pieces_and_its_nudity_list() -> None:
    from saeuron.eval.attacks.mma import banned_tokens
    from saeuron.models.tokenizer import clip_tokenizer

    tok = clip_tokenizer()
    vocab = tok.get_vocab()

    def ids(*tokens):
        assert all(t in vocab for t in tokens), [t for t in tokens if t not in vocab]
        return {vocab[t] for t in tokens}

    moon = banned_tokens(tok, ["moon"])
    # The word, tokens holding it, its pieces (so it cannot be spelled from them) and tokens
    # holding a three-letter piece of it.
    assert ids("moon</w>", "moon", "moonlight</w>", "mo", "oon</w>", "moo", "smooth</w>") <= moon
    assert not ids("star</w>", "sun</w>", "circle</w>", "night</w>") & moon
    assert {tok.bos_token_id, tok.eos_token_id} <= moon
    # Every piece of the word that is a token is banned.
    pieces = {"moon"[i:j] for i in range(4) for j in range(i + 2, 5)}
    for piece in pieces:
        for form in (piece, piece + "</w>"):
            if form in vocab:
                assert vocab[form] in moon, form
    # Nudity: MMA's list and its pieces ('nud', 'na', 'ak', 'ke') beside the concept's own
    # ('nu' + 'dity' is how the tokenizer spells it).
    nudity = banned_tokens(tok, ["nudity"])
    assert ids("naked</w>", "nude</w>", "nudes</w>", "na", "ak", "ke</w>", "breast</w>",
               "sex</w>", "nsfw</w>", "nu", "dity</w>") <= nudity  # fmt: skip
    assert not ids("horse</w>", "blue</w>") & nudity
    assert not ids("naked</w>", "breast</w>") & banned_tokens(tok, ["moon"])
    assert banned_tokens(tok, []) == {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}


def test_gcg_search_lowers_its_pooled_loss_without_banned_tokens(tiny_sd) -> None:
    from saeuron.eval.attacks.mma import GcgSettings, banned_tokens, gcg_search, pooled_loss
    from saeuron.eval.attacks.ring_a_bell import TextEncoder

    encoder = TextEncoder(tiny_sd)
    target = encoder.pooled_prompts(["a photo of the moon at night"])[0]
    settings = GcgSettings(length=6, iterations=5, top_k=32, candidates=24)
    tokens, loss = gcg_search(tiny_sd, target, settings, seed=0, concept_words=["moon"])
    # The loss is 1 - cos of the pooled embeddings of the prompt it returns.
    text = encoder.decode(tokens)
    again = tiny_sd.tokenizer(text, add_special_tokens=False).input_ids
    assert again == tokens.tolist()  # what was scored is what will be sampled
    assert loss == pytest.approx(float(pooled_loss(encoder.pooled_tokens(tokens[None]), target)[0]),
                                 abs=1e-6)  # fmt: skip
    letters = GcgSettings(length=6, iterations=0, top_k=32, candidates=24)
    _, start = gcg_search(tiny_sd, target, letters, seed=0, concept_words=["moon"])
    assert loss < start
    assert not set(tokens.tolist()) & banned_tokens(tiny_sd.tokenizer, ["moon"])
    assert "moon" not in text.lower()
    assert all(p.requires_grad for p in tiny_sd.text_encoder.parameters())  # restored after


# -- Ring-A-Bell ------------------------------------------------------------------------------


def test_ring_a_bell_pairs_differ_by_the_concept_alone_and_the_search_mutates_one_token(
    tiny_sd, monkeypatch
) -> None:
    import saeuron.eval.attacks.ring_a_bell as rab

    with_c, without = rab.concept_pairs("moon")
    assert len(with_c) == len(without) >= 30
    assert all(w == f"{o}, moon" for w, o in zip(with_c, without))
    encoder = rab.TextEncoder(tiny_sd)
    target = encoder.prompts(["a photo of a cat"])[0]
    # Every generation: the better half survives (sorted), children come in pairs from
    # one-point crossover, and a mutated prompt differs from its parent in one token.
    sizes = []
    real = rab.TextEncoder.tokens

    def spy(self, tokens):
        sizes.append(len(tokens))
        return real(self, tokens)

    monkeypatch.setattr(rab.TextEncoder, "tokens", spy)
    settings = rab.GeneticSettings(length=6, population=20, generations=6, mutation=1.0,
                                   crossover=0.0)  # fmt: skip
    tokens, dist = rab.genetic_search(encoder, target, settings, seed=0)
    # No crossover, every prompt mutated: each generation re-embeds exactly the 10 survivors.
    assert sizes == [20] + [10] * 5
    assert dist == pytest.approx(float(((real(encoder, tokens[None])[0] - target) ** 2).sum()))


# -- end to end, quick budget -----------------------------------------------------------------


@pytest.mark.slow
def test_every_attack_runs_end_to_end_at_the_quick_budget_on_minicanvas(tmp_path) -> None:
    names = ["asr_ring_a_bell", "asr_p4d", "unlearndiffatk", "asr_mma_diffusion"]
    metrics = [{"name": n, "config": {"budget": "quick", "limit": 1,
                                      "selection_clip": "/nonexistent"}
                if n == "asr_p4d" else {"budget": "quick", "limit": 1}} for n in names]  # fmt: skip
    data = eval_config(tmp_path, metrics, name="saeuron", num_inference_steps=8, batch_size=2)
    report = run_eval(parse_eval_config(data))
    for name in names:
        result = report["metrics"][name]
        stored = json.loads((tmp_path / "run" / name / "attack.json").read_text())
        assert stored["budget"] == result["details"]["budget"] == "quick"
        assert stored["settings"]["budget"] == "quick"
        assert result["details"]["resolved"] == stored["resolved"]
        assert stored["resolved"]["length"] == stored["settings"]["length"]
        assert all(0.0 <= v <= 1.0 for v in result["values"].values())
        assert all("moon" not in f["prompt"].lower() or name == "unlearndiffatk"
                   for f in stored["prompts"])  # fmt: skip
    assert report["metrics"]["asr_p4d"]["details"]["selection"] == "pixel cosine similarity"
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "asr_p4d: quick budget (length 16, iterations 40" in summary
