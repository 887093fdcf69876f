"""tifa: questions, official files, a VQA model built from config."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers.evaluation import (
    config,
    tiny_vilt,
    ua_ira_config,
)
from PIL import Image

from saeuron.eval import parse_eval_config, run_eval
from saeuron.utils.config import ConfigError


def test_tifa_scores_each_image_by_its_questions(tmp_path, colour, monkeypatch) -> None:
    import saeuron.eval.metrics.tifa as tifa

    def vqa(model, device=None):
        assert model == "tiny-vqa"
        # A stand-in VQA model: reads the colour, answers freely ("reddish", "blue!").
        return lambda image, question: (
            "reddish" if np.asarray(image)[..., 0].mean() > 100 else "blue!")

    monkeypatch.setattr(tifa, "load_vqa", vqa)
    qa = tmp_path / "qa.csv"
    qa.write_text(
        "prompt,question,choices,answer\n"
        "a nude statue,what colour is it?,red|blue|green,red\n"
        "a nude statue,is it blue?,yes|no,no\n"
        "a man in a coat,what colour is it?,red|blue|green,red\n"
    )
    data = ua_ira_config(tmp_path)
    data["metric"] = {"name": "tifa", "config": {"qa_path": str(qa), "vqa_model": "tiny-vqa"}}
    result = run_eval(parse_eval_config(data))["metrics"]["tifa"]
    # Statue (red): "reddish" -> red (right); "is it blue?" -> closest of yes/no to
    # "reddish" is "yes" (wrong): 1/2. Man in a coat (blue): "blue!" -> blue, wrong: 0.
    rows = list(csv.DictReader(open(tmp_path / "run" / "tifa" / "images.csv")))
    assert [float(r["tifa"]) for r in rows] == [0.5, 0.0]
    assert result["images"] == 2 and result["values"]["tifa"] == pytest.approx(0.25)


def test_tifa_reads_the_official_json_and_rejects_bad_records(tmp_path) -> None:
    from saeuron.eval.metrics.tifa import closest_choice, read_questions

    path = tmp_path / "tifa.json"
    path.write_text(json.dumps([
        {"id": "1", "caption": "a cat", "question": "is there a cat?",
         "choices": ["yes", "no"], "answer": "yes", "element_type": "animal"},
        {"id": "1", "caption": "a cat", "question": "what animal?",
         "choices": ["cat", "dog"], "answer": "cat"},
    ]))  # fmt: skip
    questions = read_questions(path)
    assert list(questions) == ["a cat"] and len(questions["a cat"]) == 2
    assert closest_choice("Cat", ["cat", "dog"]) == "cat"
    assert closest_choice("doggo", ["cat", "dog"]) == "dog"
    path.write_text(json.dumps([{"caption": "x", "question": "q", "choices": ["a"],
                                 "answer": "b"}]))  # fmt: skip
    with pytest.raises(ConfigError, match="answer 'b' not in choices"):
        read_questions(path)


def test_tifa_with_a_real_vqa_classifier_built_from_config(tmp_path) -> None:
    import saeuron.eval.metrics.tifa as tifa

    folder = tiny_vilt(tmp_path / "vilt")
    tifa.load_vqa.cache_clear()
    answer = tifa.load_vqa(str(folder), "cpu")
    given = answer(Image.new("RGB", (32, 32), (200, 0, 0)), "what colour is it?")
    assert given in {"red", "blue", "green"}  # random weights: one of its labels
    qa = tmp_path / "qa.csv"
    qa.write_text(
        "prompt,question,choices,answer\n"
        f"An image of moon in dotted style.,what colour is it?,red|blue|green,{given}\n"
    )
    data = config(tmp_path, [{"name": "tifa", "config": {"qa_path": str(qa),
                                                         "vqa_model": str(folder)}}],
                  num_inference_steps=4)  # fmt: skip
    result = run_eval(parse_eval_config(data))["metrics"]["tifa"]
    assert result["images"] == 1 and 0.0 <= result["values"]["tifa"] <= 1.0
    tifa.load_vqa.cache_clear()
    with pytest.raises(tifa.MetricError, match="cannot load the VQA model"):
        tifa.load_vqa(str(tmp_path / "none"), "cpu")
    tifa.load_vqa.cache_clear()
