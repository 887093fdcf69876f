"""One bar over every denoising step of a job, fed by the pipeline's own callback."""

from __future__ import annotations

from saeuron.models.progress import StepProgress, accepts_step_callback


def test_steps_of_several_calls_count_on_one_bar_and_the_callers_callback_runs(tiny_sd) -> None:
    assert accepts_step_callback(tiny_sd)
    seen: list[int] = []

    def theirs(pipe, step, timestep, callback_kwargs):
        seen.append(step)
        return callback_kwargs

    with StepProgress(total=5, disable=True) as progress:
        progress.run(tiny_sd, "a cat", num_inference_steps=2, output_type="np")
        progress.run(
            tiny_sd, "a dog", num_inference_steps=3, output_type="np", callback_on_step_end=theirs
        )
    assert progress.done == 5
    assert seen == [0, 1, 2]


def test_a_pipeline_without_the_callback_moves_the_bar_once_per_call() -> None:
    calls: list[dict] = []

    def plain_pipe(prompt: str, num_inference_steps: int) -> str:
        calls.append({"prompt": prompt, "steps": num_inference_steps})
        return "images"

    with StepProgress(total=8, disable=True) as progress:
        assert progress.run(plain_pipe, "x", num_inference_steps=4) == "images"
        progress.run(plain_pipe, "y", num_inference_steps=4)
    assert progress.done == 8 and [c["prompt"] for c in calls] == ["x", "y"]
