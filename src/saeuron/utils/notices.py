"""Third-party notices that say nothing to a saeuron user, dropped by exact text.

Each entry names the logger that emits the notice, the text it is recognised by, and why it
cannot be fixed on our side. Everything else the libraries log passes through untouched, and
with the ``saeuron`` logger at DEBUG (``saeuron -v``) these pass too.

- transformers 5 announces, when diffusers imports ``CLIPImageProcessor`` or
  ``SiglipImageProcessor``, that it falls back to their PIL versions because torchvision is
  absent. saeuron never preprocesses images with them, and the torchvision wheels on PyPI do
  not import beside the CPU torch wheel, so there is nothing to install.
- diffusers' ``StableDiffusionPipeline`` annotates its ``vae`` as ``AutoencoderKL`` and warns
  when loading a folder whose VAE is ``AutoencoderTiny``, the drop-in decoder diffusers itself
  documents for these pipelines (MiniCanvas ships one). Only a different pipeline class would
  avoid it, and the bundled model is a stock pipeline on purpose.
"""

from __future__ import annotations

import logging

KNOWN_NOTICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("transformers.utils.import_utils", ("requires torchvision (not installed); falling back",)),
    ("diffusers.pipelines.pipeline_utils", ("Expected types for vae:", "AutoencoderTiny")),
)
"""(logger, every fragment a message must hold to be dropped)."""


class _DropKnown(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger("saeuron").isEnabledFor(logging.DEBUG):
            return True
        message = record.getMessage()
        return not all(fragment in message for fragment in self.fragments)


def silence_known_notices() -> None:
    """Install the filters (once); cheap, and imports no third-party package."""
    for name, fragments in KNOWN_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) and f.fragments == fragments for f in logger.filters):
            logger.addFilter(_DropKnown(fragments))
