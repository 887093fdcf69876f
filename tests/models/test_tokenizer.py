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


def test_t5_tokenizer_has_t5s_special_tokens_and_pieces() -> None:
    from saeuron.models.tokenizer import t5_tokenizer

    tokenizer = t5_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1
    # Listed words are one piece each, the sequence ends with </s>, as T5 ends it.
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("a cat in ink style").input_ids)
    assert pieces == ["\u2581a", "\u2581cat", "\u2581in", "\u2581ink", "\u2581style", "</s>"]
    # An unlisted word is spelled from known pieces: never <unk> for ASCII text.
    ids = tokenizer("Zebras eating 42 burgers!").input_ids
    assert tokenizer.unk_token_id not in ids and len(ids) > 5
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Zebras eating 42 burgers!"


def test_t5_tokenizer_pads_and_truncates_like_the_pipelines_ask() -> None:
    from saeuron.models.tokenizer import t5_tokenizer

    batch = t5_tokenizer()(
        ["a cat", "a photo of a dog " * 40], padding="max_length", max_length=32,
        truncation=True, return_tensors="pt",
    )  # fmt: skip
    assert batch.input_ids.shape == (2, 32)
    assert batch.input_ids[0, 3:].eq(0).all() and batch.attention_mask[0].sum() == 3
    assert batch.input_ids[1, -1] == 1  # truncated, still closed by </s>
