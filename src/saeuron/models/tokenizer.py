"""Tokenizers built offline: Stable Diffusion's exact CLIP tokenizer, and a tiny T5 one.

The CLIP merges file (MIT, from OpenAI CLIP, as shipped by open_clip) is bundled; the
vocabulary is derived from it the way CLIP does, so token ids match OpenAI's.

T5's SentencePiece model cannot be had offline. The tiny SD3, FLUX and PixArt test pipelines
use :func:`t5_tokenizer` instead: T5's tokenizer class and special tokens (``<pad>`` 0,
``</s>`` 1, ``<unk>`` 2, 100 sentinels) over a small Unigram vocabulary of the project's own
word list. Its ids are not T5's; it only has to turn prompts into ids the way T5 does.
"""

from __future__ import annotations

import gzip
import json
import string
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer, T5Tokenizer

from saeuron.utils.files import CLIP_BPE, T5_WORDS
from saeuron.utils.io import atomic_write
from saeuron.utils.text import read_text

N_MERGES = 49152 - 256 - 2
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable character map."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    # Order matters: the vocabulary lists printable bytes first, as CLIP does.
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def write_clip_tokenizer_files(folder: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (Hugging Face layout) into ``folder``."""
    folder = Path(folder)
    lines = gzip.decompress(CLIP_BPE.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    atomic_write(
        folder / "vocab.json",
        lambda p: p.write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8"),
    )
    atomic_write(
        folder / "merges.txt",
        lambda p: p.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"),
    )
    return folder


@lru_cache(maxsize=1)
def _tokenizer_folder() -> Path:
    folder = Path.home() / ".cache" / "saeuron" / "clip_tokenizer"
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        write_clip_tokenizer_files(folder)
    return folder


def clip_tokenizer() -> CLIPTokenizer:
    folder = _tokenizer_folder()
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_LENGTH
    )


T5_WORD_SCORE = -8.0
T5_CHARACTER_SCORE = -12.0
"""Unigram log-probabilities: a listed word beats spelling it out, so "cat" is one piece and
an unlisted word falls back to known words and single characters (never ``<unk>`` for
ASCII text)."""
_T5_CHARACTERS = string.ascii_letters + string.digits + ".,;:!?'\"()-&/#%+*=_"


def _t5_vocab() -> list[tuple[str, float]]:
    words = [
        line.strip()
        for line in read_text(T5_WORDS, "T5 word list").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", T5_CHARACTER_SCORE)]
    seen = {piece for piece, _ in vocab}
    pieces = [("\u2581" + w, T5_WORD_SCORE) for w in words]
    for c in _T5_CHARACTERS:
        pieces += [(c, T5_CHARACTER_SCORE), ("\u2581" + c, T5_CHARACTER_SCORE)]
    for piece, score in pieces:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))
    # T5 lists its 100 sentinels last, <extra_id_99> first.
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return vocab


def t5_tokenizer() -> T5Tokenizer:
    """A T5 tokenizer over the bundled word list (see the module docstring)."""
    return T5Tokenizer(vocab=_t5_vocab(), extra_ids=100)
