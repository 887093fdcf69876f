"""Fault injection, kill -9: an eval run killed mid-sampling leaves no half-written image, and
started again it ends with the images and numbers of a run never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.evaluation import ROOT, ColourTechnique, ua_ira_config
from PIL import Image

from saeuron.eval import parse_eval_config, run_eval

# The stand-in technique of the eval tests, slowed so the kill lands mid-run, in a process
# of its own (what `saeuron eval` would be).
SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {tests!r})
    from helpers.evaluation import ColourClip, ColourTechnique
    import saeuron.eval.clip as clip_module
    import saeuron.eval.metrics.ua_ira as ua_ira_module
    import saeuron.eval.runner as runner
    from saeuron.eval import parse_eval_config, run_eval

    class Slow(ColourTechnique):
        def generate(self, prompts, seeds):
            time.sleep(0.3)
            return ColourTechnique._draw(self, prompts, seeds)

    runner.build_technique = lambda name, cfg: Slow()
    runner.check_technique_config = lambda cfg: None
    for module in (ua_ira_module, clip_module):
        module.load_clip = lambda model, device=None: ColourClip()
    run_eval(parse_eval_config(json.load(open({config!r}))))
    """
)


@pytest.mark.slow  # a subprocess killed mid-run, then a resumed one
def test_eval_killed_with_sigkill_resumes_to_the_same_report(tmp_path, colour) -> None:
    fresh = run_eval(parse_eval_config(ua_ira_config(tmp_path, "fresh")))

    data = ua_ira_config(tmp_path, "killed")
    (tmp_path / "cfg.json").write_text(json.dumps(data))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests"), config=str(tmp_path / "cfg.json")))
    images = tmp_path / "killed" / "ua_ira" / "images"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    process = subprocess.Popen([sys.executable, str(script)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while len(list(images.glob("*.png"))) < 16:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no images after 240 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    written = sorted(images.glob("*.png"))
    assert 16 <= len(written) < 70 and not (tmp_path / "killed" / "report.json").exists()
    for path in written:  # every image under its final name is whole
        with Image.open(path) as image:
            image.load()

    ColourTechnique.calls = 0
    resumed = run_eval(parse_eval_config(data))
    assert ColourTechnique.calls < 9  # only the chunks the killed run had not finished
    assert resumed["metrics"] == fresh["metrics"]
    assert not list((tmp_path / "killed").rglob("*.tmp"))
    for a, b in zip(sorted(images.glob("*.png")),
                    sorted((tmp_path / "fresh" / "ua_ira" / "images").glob("*.png"))):  # fmt: skip
        assert a.read_bytes() == b.read_bytes()
    table = (tmp_path / "killed" / "ua_ira" / "images.csv").read_text()
    assert table == (tmp_path / "fresh" / "ua_ira" / "images.csv").read_text()


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path, colour) -> None:
    data = ua_ira_config(tmp_path)
    stale = Path(data["output_dir"]) / "ua_ira" / "images" / ".00003.png.abc123.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a png")
    run_eval(parse_eval_config(data))
    assert not stale.exists()
