"""``tifa``: text-to-image faithfulness, the share of questions about a prompt that a VQA
model answers right on its image (Hu et al., 2023).

Questions come from ``qa_path``: TIFA's ``tifa_v1.0_question_answers.json`` (a list of
``{caption, question, choices, answer}``) or a CSV with columns ``prompt``, ``question``,
``choices`` (``|``-separated) and ``answer``. One image per prompt; its score is the share of
its questions answered right, and TIFA is their mean. The VQA model (any transformers
``visual-question-answering`` checkpoint, an id or a local folder) answers freely; the answer
is mapped to the closest choice (exact match, else string similarity; TIFA maps with SBERT).
Generative VQA models (BLIP, TIFA's usual kind) answer in words; classifiers (ViLT) by label.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

from saeuron.eval.clip import available_offline
from saeuron.eval.metrics.base import Item, Metric, MetricError, Requirement, mean_of, register
from saeuron.utils.config import Config, ConfigError, field
from saeuron.utils.config_parts import MAX_LIMIT, Device, Limit
from saeuron.utils.devices import resolve_device
from saeuron.utils.text import read_json, read_text

DEFAULT_VQA = "Salesforce/blip-vqa-base"


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: str


def read_questions(path: str | Path) -> dict[str, list[Question]]:
    """Prompt -> its questions, in file order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("qa_path", f"file {str(path)!r} does not exist")
    records: list[dict[str, Any]]
    if path.suffix.lower() == ".json":
        records = read_json(path, "qa_path")
        if not isinstance(records, list):
            raise ConfigError("qa_path", f"{path} must hold a list of question records")
    else:
        text = io.StringIO(read_text(path, "qa_path"), newline="")
        records = [
            {**r, "choices": [c.strip() for c in (r.get("choices") or "").split("|") if c]}
            for r in csv.DictReader(text)
        ]
    out: dict[str, list[Question]] = {}
    for n, r in enumerate(records, start=1):
        prompt = r.get("caption") or r.get("prompt")
        if not prompt or not r.get("question") or not r.get("answer"):
            raise ConfigError(
                "qa_path", f"{path} record {n}: needs caption (or prompt), question and answer"
            )
        choices = tuple(str(c) for c in (r.get("choices") or []))
        answer = str(r["answer"])
        if choices and answer not in choices:
            raise ConfigError("qa_path", f"{path} record {n}: answer {answer!r} not in choices")
        out.setdefault(str(prompt), []).append(Question(str(r["question"]), choices, answer))
    if not out:
        raise ConfigError("qa_path", f"{path} holds no questions")
    return out


def closest_choice(answer: str, choices: Sequence[str]) -> str:
    if not choices:
        return answer
    folded = answer.strip().lower()
    for choice in choices:
        if choice.lower() == folded:
            return choice
    return max(choices, key=lambda c: difflib.SequenceMatcher(None, folded, c.lower()).ratio())


@lru_cache(maxsize=1)
def load_vqa(model: str, device: str | None = None) -> Callable[[Any, str], str]:
    """``answer(image, question) -> str`` from a transformers VQA checkpoint: a generative one
    (BLIP) answers in words, a classifier (ViLT) by its best label. transformers 5 dropped
    the visual-question-answering pipeline, so both are driven here."""
    target = resolve_device(device)
    try:
        processor = AutoProcessor.from_pretrained(model)
        net = AutoModelForVisualQuestionAnswering.from_pretrained(model).to(target).eval()
    except (OSError, ValueError) as err:
        raise MetricError(f"cannot load the VQA model {model!r}: {err}") from err
    generative = bool(net.can_generate())

    @torch.no_grad()
    def answer(image: Any, question: str) -> str:
        inputs = processor(images=image.convert("RGB"), text=question, return_tensors="pt")
        inputs = {k: v.to(target) for k, v in inputs.items()}
        if generative:
            ids = net.generate(**inputs, max_new_tokens=10)
            return str(processor.decode(ids[0], skip_special_tokens=True)).strip()
        logits = net(**inputs).logits
        return str(net.config.id2label[int(logits.argmax(-1)[0])])

    return answer


@dataclass
class TifaConfig(Config):
    qa_path: str | None = field(
        None, help="TIFA's question/answer JSON or a CSV (prompt, question, choices, answer)"
    )
    count: Limit = field(
        Limit, flatten=True, help="how many prompts",
        describe={"limit": "at most this many prompts"},
        limits={"limit": {"le": MAX_LIMIT}},
    )  # fmt: skip
    vqa_model: str = field(DEFAULT_VQA, help="VQA checkpoint: hub id or local folder")
    runtime: Device = field(
        Device, flatten=True, help="where the VQA model runs",
        describe={"device": "device of the VQA model"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.qa_path is not None:
            read_questions(self.qa_path)
        if not self.vqa_model.strip():
            raise ConfigError("vqa_model", "must be a model id or folder")


@register
class Tifa(Metric):
    name = "tifa"
    Config = TifaConfig
    higher_is_better = {"tifa": True}
    help = "share of a prompt's questions a VQA model answers right on its image"

    config: TifaConfig

    def requirements(self) -> list[Requirement]:
        ok = available_offline(self.config.vqa_model)
        needs = [
            Requirement(
                f"VQA model {self.config.vqa_model}",
                ok,
                "" if ok else "not on this machine: downloaded from the hub",
                kind="download",
            )
        ]
        if self.config.qa_path is None:
            needs.append(Requirement("TIFA questions", False, "set qa_path"))
        return needs  # fmt: skip

    def _questions(self) -> dict[str, list[Question]]:
        if self.config.qa_path is None:
            raise MetricError(
                "tifa needs questions: set qa_path to TIFA's tifa_v1.0_question_answers.json "
                "or a CSV with prompt, question, choices, answer"
            )
        questions = read_questions(self.config.qa_path)
        keep = list(questions)[: self.config.limit] if self.config.limit else list(questions)
        return {p: questions[p] for p in keep}

    def prepare(self) -> None:
        self._questions()
        load_vqa(self.config.vqa_model, self.config.device)

    def items(self, seed: int) -> list[Item]:
        return [
            Item(prompt, seed + i, "all", {"questions": len(qs)})
            for i, (prompt, qs) in enumerate(self._questions().items())
        ]

    def score(
        self, images: Sequence[Any], items: Sequence[Item], unerased: Sequence[Any] | None
    ) -> list[dict[str, Any]]:
        questions = self._questions()
        answer = load_vqa(self.config.vqa_model, self.config.device)
        rows = []
        for image, item in zip(images, items):
            asked = questions[item.prompt]
            given = [closest_choice(answer(image, q.question), q.choices) for q in asked]
            right = [g.lower() == q.answer.lower() for g, q in zip(given, asked)]
            rows.append({
                "tifa": sum(right) / len(right),
                "answers": json.dumps(dict(zip((q.question for q in asked), given))),
            })  # fmt: skip
        return rows

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {"tifa": mean_of(rows, "tifa")}
