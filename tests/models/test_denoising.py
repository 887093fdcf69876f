"""The step read from the pipeline: under every scheduler users run, 1 to 1000 steps."""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers import UNet2DConditionModel

from saeuron.models.denoising import DenoiseTracker, step_layout, track_denoising
from saeuron.models.sampling import check_schedule
from saeuron.models.tiny import PUBLISHED_SCHEDULERS, build_tiny_sd, published_scheduler
from saeuron.utils.config import ConfigError

SD14 = PUBLISHED_SCHEDULERS["sd14"]

# (scheduler class, config overrides, most steps it runs on SD 1.4's schedule). Schedules
# with steps_offset 1 reach timestep 1000 at 1000 steps (diffusers then fails); LCM runs at
# most its distillation's 50 steps.
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}, 999),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, 999),
    "euler": ("EulerDiscreteScheduler", {}, 1000),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, 1000),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, 1000),
    "unipc": ("UniPCMultistepScheduler", {}, 1000),
    "lcm": ("LCMScheduler", {}, 50),
    "heun": ("HeunDiscreteScheduler", {}, 1000),
    "dpm2": ("KDPM2DiscreteScheduler", {}, 1000),
}


@pytest.fixture(scope="module")
def micro():
    """SD 1.4's layout shrunk to almost nothing (one 4-channel level, 8x8 latents): the
    stock pipeline and its schedulers, with a denoiser cheap enough for 1000 steps."""
    pipe = build_tiny_sd()
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4,),
        layers_per_block=1,
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    return pipe


def _scheduler(name: str):
    cls, overrides, _ = SCHEDULERS[name]
    return getattr(diffusers, cls).from_config(SD14, **overrides)


def _run(pipe, steps: int, guidance: float = 1.0, **kw) -> list[tuple[int, int, int, float]]:
    """(step, substep, num_steps, timestep) of every denoiser call of one pipeline call."""
    calls: list[tuple[int, int, int, float]] = []
    tracker = DenoiseTracker(pipe)
    tracker.add_listener(
        lambda s, x: calls.append((s.step, s.substep, s.num_steps, s.timestep))
    )
    try:
        pipe("a", num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
             height=16, width=16, **kw)  # fmt: skip
    finally:
        tracker.remove()
    return calls


def _check_steps(calls, steps: int, second_calls: int) -> None:
    firsts = [c for c in calls if c[1] == 0]
    assert [c[0] for c in firsts] == list(range(steps)), "each step once, in order"
    assert all(c[2] == steps for c in calls), "num_steps is the steps asked for"
    assert sum(c[1] > 0 for c in calls) == second_calls
    # A second call belongs to the step its first call started.
    for previous, call in zip(calls, calls[1:]):
        if call[1]:
            assert call[0] == previous[0] and call[1] == previous[1] + 1


def _second_calls(name: str, steps: int) -> int:
    if name in ("heun", "dpm2"):
        return steps - 1  # every step but the last corrects itself with a second call
    if name == "pndm":
        return 1 if steps > 1 else 0  # its first step is two calls
    return 0


def test_step_layout_counts_as_the_diffusers_loop() -> None:
    assert step_layout(5, 5) == [0, 1, 2, 3, 4]
    # PNDM at 50 steps: 51 timesteps (961 twice), the first step is two calls.
    assert step_layout(51, 50)[:4] == [0, 0, 1, 2] and step_layout(51, 50)[-1] == 49
    # Heun at 4 steps: 7 calls, two per step but the last.
    assert step_layout(7, 4, order=2) == [0, 0, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_every_step_is_seen_once_under_every_scheduler(micro, name, steps) -> None:
    if name == "dpm2" and steps != 2:
        pytest.skip("DPM2 sets its schedule slowly; 2 steps show its two calls per step")
    micro.scheduler = _scheduler(name)
    calls = _run(micro, steps)
    _check_steps(calls, steps, _second_calls(name, steps))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("steps", [3, 21, 50, "most"])
def test_many_steps_up_to_the_most_each_scheduler_runs(micro, name, steps) -> None:
    steps = SCHEDULERS[name][2] if steps == "most" else steps
    micro.scheduler = _scheduler(name)
    _check_steps(_run(micro, steps), steps, _second_calls(name, steps))


def test_sd14_pndm_at_50_steps_repeats_961_yet_every_step_is_seen(micro) -> None:
    micro.scheduler = published_scheduler("sd14")
    calls = _run(micro, 50, guidance=7.5)
    assert len(calls) == 51 and [c[3] for c in calls[:3]] == [981.0, 961.0, 961.0]
    _check_steps(calls, 50, 1)
    # The step's own timestep is its first call's.
    assert [c[3] for c in calls if c[1] == 0][:3] == [981.0, 961.0, 941.0]


def test_sdxl_turbo_schedule_trailing_one_to_four_steps(micro) -> None:
    micro.scheduler = published_scheduler("sdxl-turbo")
    for steps in (1, 2, 3, 4):
        calls = _run(micro, steps)
        _check_steps(calls, steps, 0)
        assert calls[0][3] == 999.0  # trailing spacing starts at the last training timestep


def test_img2img_steps_are_positions_in_the_full_schedule(micro) -> None:
    # strength 0.5 starts half-way: the steps run are the second half of the schedule.
    pipe = diffusers.StableDiffusionImg2ImgPipeline(**micro.components)
    pipe.set_progress_bar_config(disable=True)
    for name in ("ddim", "euler", "dpmsolver++"):
        pipe.scheduler = _scheduler(name)
        calls = []
        with track_denoising(pipe) as state:
            handle = pipe.unet.register_forward_pre_hook(
                lambda m, a, calls=calls, state=state: calls.append(state.step)
            )
            try:
                pipe("a", image=torch.zeros(1, 3, 16, 16), strength=0.5, num_inference_steps=10,
                     guidance_scale=1.0, output_type="latent")  # fmt: skip
            finally:
                handle.remove()
        assert calls == list(range(5, 10)), name


def test_a_call_outside_the_loop_has_no_step_but_its_timestep(micro) -> None:
    micro.scheduler = published_scheduler("sd14")
    with track_denoising(micro) as state:
        x, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
        micro.unet(x, torch.tensor(437), encoder_hidden_states=context)  # before any sampling
        assert (state.step, state.timestep, state.in_loop) == (-1, 437.0, False)
        micro("a", num_inference_steps=3, guidance_scale=1.0, output_type="latent",
              height=16, width=16)  # fmt: skip
        assert state.in_loop and state.step == 2
        # After sampling, as a white-box attack does: at a schedule's timestep or not. PNDM
        # keeps its position, so it knows its loop is over.
        for t in (437, int(micro.scheduler.timesteps[1])):
            micro.unet(x, torch.tensor(t), encoder_hidden_states=context)
            assert (state.step, state.timestep) == (-1, float(t))
        assert int(state.step_tensor) == -1
    # DDIM keeps no position: off its schedule a call is outside, on it it reads as that step.
    micro.scheduler = _scheduler("ddim")
    micro.scheduler.set_timesteps(20)
    with track_denoising(micro) as state:
        micro.unet(x, torch.tensor(437), encoder_hidden_states=context)
        assert state.step == -1
        micro.unet(x, micro.scheduler.timesteps[5], encoder_hidden_states=context)
        assert (state.step, state.num_steps) == (5, 20)


def test_the_step_tensor_follows_the_step(micro) -> None:
    micro.scheduler = _scheduler("euler")
    seen: list[tuple[int, int]] = []
    tracker = DenoiseTracker(micro)
    tracker.add_listener(lambda s, x: seen.append((s.step, int(s.step_tensor))))
    try:
        micro("a", num_inference_steps=4, guidance_scale=1.0, output_type="latent",
              height=16, width=16)  # fmt: skip
    finally:
        tracker.remove()
    assert seen == [(i, i) for i in range(4)]


def test_a_users_step_callback_keeps_its_indices(micro) -> None:
    micro.scheduler = _scheduler("heun")
    got: list[int] = []

    def callback(pipe, i, t, kwargs):
        got.append(i)
        return {}

    with track_denoising(micro):
        micro("a", num_inference_steps=3, guidance_scale=1.0, output_type="latent",
              height=16, width=16, callback_on_step_end=callback)  # fmt: skip
    assert got == list(range(5))  # the pipeline's own loop: 2 x 3 - 1 calls


def test_check_schedule_refuses_steps_the_scheduler_cannot_run(micro) -> None:
    micro.scheduler = published_scheduler("sd14")
    check_schedule(micro, 999)
    with pytest.raises(ConfigError, match="num_inference_steps.*at most 999"):
        check_schedule(micro, 1000)
    micro.scheduler = _scheduler("lcm")
    with pytest.raises(ConfigError, match="num_inference_steps"):
        check_schedule(micro, 51)
    micro.scheduler = _scheduler("euler")
    check_schedule(micro, 1000)
