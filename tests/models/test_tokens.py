"""Each block's output layout, read from diffusers' own block classes: the image tokens are
found, replaced alone, and the text stream of a joint block passes through untouched."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
from diffusers.models.transformers.transformer_flux import (
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)
from torch import nn

from saeuron.models.hookpoints import resolve_module
from saeuron.models.tokens import (
    JOINT_LAYOUT,
    SEQUENCE_LAYOUT,
    UNET_LAYOUT,
    block_layout,
    from_tokens,
    input_tensor,
    output_tensor,
    replace_output,
    to_tokens,
)
from saeuron.utils.errors import ConfigError

B, T, S, D = 2, 6, 5, 32


def _inputs() -> dict[str, torch.Tensor]:
    return {
        "hidden_states": torch.randn(B, T, D),
        "encoder_hidden_states": torch.randn(B, S, D),
        "temb": torch.randn(B, D),
    }


def _joint_blocks() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "sd3": JointTransformerBlock(dim=D, num_attention_heads=4, attention_head_dim=8),
        "sd3-last": JointTransformerBlock(
            dim=D, num_attention_heads=4, attention_head_dim=8, context_pre_only=True
        ),
        "flux-double": FluxTransformerBlock(dim=D, num_attention_heads=2, attention_head_dim=16),
        "flux-single": FluxSingleTransformerBlock(
            dim=D, num_attention_heads=2, attention_head_dim=16
        ),
    }


@pytest.mark.parametrize("name", ["sd3", "sd3-last", "flux-double", "flux-single"])
def test_joint_blocks_hand_the_image_stream_and_keep_the_text(name: str) -> None:
    block = _joint_blocks()[name].eval()
    assert block_layout(block) is JOINT_LAYOUT
    inputs = _inputs()
    with torch.no_grad():
        text, image = block(**inputs)
    assert image.shape == (B, T, D)
    seen: list[torch.Tensor] = []

    def zero_image(module, args, kwargs, output):
        seen.append(output_tensor(module, output))
        assert input_tensor(module, args, kwargs) is kwargs["hidden_states"]
        return replace_output(module, output, torch.zeros_like(seen[-1]))

    handle = block.register_forward_hook(zero_image, with_kwargs=True)
    try:
        with torch.no_grad():
            new_text, new_image = block(**inputs)
    finally:
        handle.remove()
    assert torch.equal(seen[0], image)
    assert torch.equal(new_image, torch.zeros_like(image))
    if text is None:  # SD3's last block computes no text stream
        assert new_text is None
    else:
        assert torch.equal(new_text, text)


def test_pixart_block_hands_its_sequence_as_it_is() -> None:
    torch.manual_seed(0)
    block = BasicTransformerBlock(
        D, 4, 8, cross_attention_dim=D, norm_type="ada_norm_single", num_embeds_ada_norm=1000
    ).eval()
    assert block_layout(block) is SEQUENCE_LAYOUT
    x = torch.randn(B, T, D)
    out = torch.randn(B, T, D)
    assert output_tensor(block, out) is out
    assert to_tokens(out) is out  # no spatial reshape of a sequence
    assert replace_output(block, out, x) is x
    assert input_tensor(block, (x,), {}) is x


def test_unet_blocks_keep_their_layout() -> None:
    from diffusers.models.modeling_outputs import Transformer2DModelOutput
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    block = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16,
                               norm_num_groups=8)  # fmt: skip
    assert block_layout(block) is UNET_LAYOUT
    x = torch.randn(B, 16, 4, 3)
    wrapped = Transformer2DModelOutput(sample=x)
    assert output_tensor(block, wrapped) is x
    assert output_tensor(block, (x,)) is x
    y = torch.randn_like(x)
    assert replace_output(block, (x,), y)[0] is y
    assert torch.equal(from_tokens(to_tokens(x), x), x)
    assert to_tokens(x).shape == (B, 12, 16)


def _old_forward(self, hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
    return hidden_states


# diffusers < 0.35's single-stream block: one [text; image] sequence in and out, and no text
# length given. Same class name, the old signature.
OldFluxSingleBlock = type("FluxSingleTransformerBlock", (nn.Module,), {"forward": _old_forward})


def test_a_concatenated_single_block_is_refused_not_guessed() -> None:
    old = OldFluxSingleBlock()
    with pytest.raises(ConfigError, match="hookpoint: .*transformer_blocks.N"):
        block_layout(old)
    transformer = nn.Module()
    transformer.single_transformer_blocks = nn.ModuleList([old])
    pipe = SimpleNamespace(transformer=transformer)
    with pytest.raises(ConfigError, match="one sequence"):
        resolve_module(pipe, "transformer.single_transformer_blocks.0")
