from __future__ import annotations

from saeuron.models.tokenizer import MAX_LENGTH, clip_tokenizer


def test_rebuilt_tokenizer_gives_openai_clip_ids() -> None:
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == MAX_LENGTH == 77
    ids = tokenizer("a photo of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]


def test_padding_to_the_pipeline_length() -> None:
    ids = clip_tokenizer()("x", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 49406
