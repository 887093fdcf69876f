"""The exact CLIP tokenizer of Stable Diffusion, rebuilt offline from the CLIP BPE merges.

The merges file (MIT, from OpenAI CLIP, as shipped by open_clip) is bundled; the vocabulary
is derived from it the way CLIP does, so token ids match OpenAI's.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from saeuron.utils.files import CLIP_BPE
from saeuron.utils.io import atomic_write

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
