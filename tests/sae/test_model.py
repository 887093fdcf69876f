from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import saeuron.utils.hub
from saeuron.sae import SAE_FORMATS, Sae, SaeConfig
from saeuron.utils.config import ConfigError


@torch.no_grad()
def naive_encode(sae: Sae, x: torch.Tensor) -> torch.Tensor:
    """Dense TopK code, written the obvious way, one token at a time."""
    out = torch.zeros(x.shape[0], sae.num_latents)
    for i, token in enumerate(x):
        pre = torch.relu(sae.encoder.weight @ (token - sae.b_dec) + sae.encoder.bias)
        top = sorted(range(sae.num_latents), key=lambda j: -float(pre[j]))[: sae.cfg.k]
        out[i, top] = pre[top]
    return out


def make_sae(d: int = 8, expansion: int = 4, k: int = 3) -> Sae:
    sae = Sae(SaeConfig(d_in=d, expansion_factor=expansion, k=k))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def test_config_derives_num_latents_and_validates() -> None:
    assert SaeConfig(d_in=10, expansion_factor=4).num_latents == 40
    with pytest.raises(ConfigError, match="^k:"):
        SaeConfig(d_in=4, expansion_factor=1, k=5)
    with pytest.raises(ConfigError, match="d_in"):
        SaeConfig(d_in=0)
    with pytest.raises(ConfigError, match="did you mean 'expansion_factor'"):
        SaeConfig.from_dict({"d_in": 4, "expansion_factr": 2})


def test_decoder_rows_start_unit_norm_and_equal_encoder_directions() -> None:
    sae = make_sae()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.num_latents))
    cos = torch.nn.functional.cosine_similarity(sae.W_dec, sae.encoder.weight, dim=1)
    torch.testing.assert_close(cos, torch.ones(sae.num_latents))


def test_encode_matches_naive_reference() -> None:
    sae = make_sae()
    x = torch.randn(20, 8)
    torch.testing.assert_close(sae.encode_dense(x), naive_encode(sae, x))


def test_decode_and_forward_match_naive_reference() -> None:
    sae = make_sae()
    x = torch.randn(20, 8)
    dense = naive_encode(sae, x)
    expected = dense @ sae.W_dec + sae.b_dec
    out = sae(x)
    torch.testing.assert_close(out.sae_out, expected)
    assert out.latent_acts.shape == out.latent_indices.shape == (20, 3)
    fvu = (expected - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.fvu, fvu)
    assert float(out.auxk_loss) == 0.0


@torch.no_grad()
def test_the_pieces_the_hook_calls_are_the_encode() -> None:
    sae = make_sae()
    x = torch.randn(20, 8)
    dense = naive_encode(sae, x)
    pre = sae.pre_acts(x)
    # The TopK gate: each token's k-th largest pre-activation, and a latent's TopK
    # activation is its pre-activation at or above it, else 0.
    expected_kth = pre.sort(dim=-1, descending=True).values[:, sae.cfg.k - 1 : sae.cfg.k]
    assert torch.equal(sae.topk_threshold(pre), expected_kth)
    latents = torch.tensor([0, 5, 31, 7])
    torch.testing.assert_close(sae.topk_acts(pre, latents), dense[:, latents])
    torch.testing.assert_close(sae.densify(sae.select_topk(pre)), dense)
    torch.testing.assert_close(sae.decode_dense(dense), dense @ sae.W_dec + sae.b_dec)
    # The SAE's tensors cast for another dtype give the same code, in that dtype.
    weights = sae.cast_weights(torch.device("cpu"), torch.float64)
    assert weights.encoder.dtype == torch.float64 and not weights.encoder.requires_grad
    torch.testing.assert_close(sae.pre_acts(x.double(), weights), pre.double())
    torch.testing.assert_close(sae.decode_dense(dense.double(), weights), sae(x).sae_out.double())


@torch.no_grad()
def test_standardising_sae_undoes_its_standardisation() -> None:
    sae = Sae(SaeConfig(d_in=8, expansion_factor=4, k=3, input_unit_norm=True))
    x = torch.randn(20, 8) * 3 + 2
    z, mean, std = sae.standardise(x)
    assert mean is not None and std is not None
    torch.testing.assert_close(z.mean(-1), torch.zeros(20), atol=1e-6, rtol=0)
    torch.testing.assert_close(sae.unstandardise(z, mean, std), x)
    # A change made to the standardised input lands in the input's scale; the mean cancels.
    change = torch.randn(20, 8)
    torch.testing.assert_close(
        sae.unstandardise(z + change, mean, std) - x, sae.unstandardise_delta(change, std)
    )
    # forward decodes through the same undoing.
    top = sae.select_topk(sae.pre_acts(z))
    torch.testing.assert_close(
        sae(x).sae_out, sae.unstandardise(sae.decode(*top), mean, std), rtol=0, atol=0
    )
    plain = make_sae()
    same, no_mean, no_std = plain.standardise(x)
    assert same is x and no_mean is None and no_std is None
    assert plain.unstandardise(x, None, None) is x and plain.unstandardise_delta(x, None) is x


def test_batch_topk_keeps_k_times_tokens_over_the_batch() -> None:
    sae = make_sae(k=3)
    x = torch.randn(16, 8)
    pre = sae.pre_acts(x)
    out = sae(x, batch_topk=True)
    kept = out.latent_acts > 0
    assert int(kept.sum()) == 3 * 16
    # The kept values are exactly the 48 largest pre-activations of the batch.
    torch.testing.assert_close(
        out.latent_acts[kept].sort().values, pre.flatten().topk(48).values.sort().values
    )
    # Per token the count varies (unlike TopK), but the total budget is the same.
    counts = kept.sum(dim=1)
    assert counts.float().std() > 0
    dense = torch.zeros(16, sae.num_latents).scatter_add_(1, out.latent_indices, out.latent_acts)
    torch.testing.assert_close(out.sae_out, dense @ sae.W_dec + sae.b_dec)


def test_auxk_loss_uses_only_dead_latents() -> None:
    sae = make_sae()
    x = torch.randn(32, 8)
    dead = torch.zeros(sae.num_latents, dtype=torch.bool)
    dead[:5] = True
    loss = sae(x, dead_mask=dead).auxk_loss
    assert float(loss) > 0
    # Gradient reaches only the dead latents' decoder rows through the AuxK term.
    loss.backward()
    assert sae.W_dec.grad[5:].abs().sum() == 0
    assert sae.W_dec.grad[:5].abs().sum() > 0


def test_gradient_projection_keeps_rows_on_the_sphere() -> None:
    sae = make_sae()
    sae(torch.randn(32, 8)).fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1)
    torch.testing.assert_close(parallel, torch.zeros_like(parallel), atol=1e-6, rtol=0)


def test_save_load_round_trip(tmp_path) -> None:
    sae = make_sae()
    sae.meta = {"hookpoint": "unet.up_blocks.1.attentions.1"}
    sae.save_to_disk(tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [
        "cfg.json",
        "sae.safetensors",
        "saeuron.json",
    ]
    loaded = Sae.load_from_disk(tmp_path / "sae")
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded.cfg == sae.cfg
    assert loaded.meta["hookpoint"] == "unet.up_blocks.1.attentions.1"


def write_published_checkpoint(folder, d: int, n: int, k: int, generator) -> dict:
    """A checkpoint laid out exactly like bcywinski/SAeUron's (sparsify's cfg keys)."""
    folder.mkdir(parents=True)
    cfg = {
        "expansion_factor": n // d,
        "normalize_decoder": True,
        "num_latents": n,
        "k": k,
        "multi_topk": False,
        "batch_topk": True,
        "sample_topk": False,
        "input_unit_norm": False,
        "skip_connection": False,
        "d_in": d,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    w_dec = torch.randn(n, d, generator=generator)
    tensors = {
        "encoder.weight": torch.randn(n, d, generator=generator),
        "encoder.bias": torch.randn(n, generator=generator) * 0.1,
        "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),
        "b_dec": torch.randn(d, generator=generator) * 0.1,
    }
    save_file(tensors, str(folder / "sae.safetensors"))
    return tensors


def test_published_layout_loads_unchanged_and_encodes(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    hookpoint = "unet.up_blocks.1.attentions.1"
    tensors = write_published_checkpoint(tmp_path / "repo" / hookpoint, 16, 64, 4, g)
    # As from_pretrained on a repo with one folder per hookpoint.
    sae = Sae.from_pretrained(tmp_path / "repo", hookpoint=hookpoint)
    assert sae.cfg.k == 4 and sae.num_latents == 64 and sae.d_in == 16
    assert sae.meta["hookpoint"] == hookpoint
    x = torch.randn(10, 16, generator=g)
    pre = torch.relu((x - tensors["b_dec"]) @ tensors["encoder.weight"].T + tensors["encoder.bias"])
    values, indices = pre.topk(4, dim=-1)
    top = sae.encode(x)
    order = top.top_indices.sort(dim=-1).indices
    torch.testing.assert_close(top.top_indices.gather(1, order), indices.sort(dim=-1).values)
    torch.testing.assert_close(top.top_acts.sort(dim=-1).values, values.sort(dim=-1).values)


def test_from_pretrained_names_missing_hookpoint(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    write_published_checkpoint(tmp_path / "repo" / "unet.up_blocks.1.attentions.1", 8, 16, 2, g)
    with pytest.raises(FileNotFoundError, match="available: unet.up_blocks.1.attentions.1"):
        Sae.from_pretrained(tmp_path / "repo", hookpoint="unet.up_blocks.1.attentions.2")
    with pytest.raises(FileNotFoundError, match="neither a local folder"):
        Sae.from_pretrained(str(tmp_path / "nope" / "deeper" / "x"))


def test_from_pretrained_downloads_only_the_hookpoint(tmp_path, monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    hub = tmp_path / "hub_snapshot"
    write_published_checkpoint(hub / "unet.up_blocks.1.attentions.1", 8, 16, 2, g)
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, revision=None, cache_dir=None):
        calls.append((repo_id, allow_patterns))
        return str(hub)

    monkeypatch.setattr(saeuron.utils.hub, "snapshot_download", fake_snapshot_download)
    sae = Sae.from_pretrained("bcywinski/SAeUron", hookpoint="unet.up_blocks.1.attentions.1")
    hook = "unet.up_blocks.1.attentions.1"
    assert calls == [("bcywinski/SAeUron", [f"{hook}/*", f"{hook}_k*"])]
    assert sae.meta["source"] == "bcywinski/SAeUron"


def test_published_checkpoint_with_wrong_shapes_is_rejected(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    write_published_checkpoint(tmp_path / "s", 8, 16, 2, g)
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["num_latents"] = 32
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="encoder.weight has shape"):
        Sae.load_from_disk(tmp_path / "s")


@pytest.mark.parametrize("as_pth", [True, False])
def test_sdxl_unbox_layout(tmp_path, as_pth: bool) -> None:
    d, n = 8, 32
    g = torch.Generator().manual_seed(2)
    state = {
        "pre_bias": torch.randn(d, generator=g),
        "latent_bias": torch.randn(n, generator=g),
        "encoder.weight": torch.randn(n, d, generator=g),
        "decoder.weight": torch.randn(d, n, generator=g),
    }
    folder = tmp_path / "unet.up_blocks.0.attentions.1_k5_hidden32_auxk16_bs4096_lr0.0001"
    folder.mkdir()
    if as_pth:
        torch.save(state, folder / "state_dict.pth")
    else:
        save_file(state, str(folder / "state_dict.safetensors"))
    sae = Sae.load_from_disk(folder)
    assert sae.cfg.k == 5 and sae.num_latents == n
    assert sae.meta["activation_site"] == "update"
    x = torch.randn(4, d, generator=g)
    # sdxl-unbox: latents = TopK(ReLU(enc(x - pre_bias) + latent_bias)); x_hat = dec(z) + pre_bias.
    pre = torch.relu((x - state["pre_bias"]) @ state["encoder.weight"].T + state["latent_bias"])
    v, i = pre.topk(5, dim=-1)
    z = torch.zeros_like(pre).scatter_(1, i, v)
    expected = z @ state["decoder.weight"].T + state["pre_bias"]
    torch.testing.assert_close(sae(x).sae_out, expected)


def test_sdxl_unbox_without_k_asks_for_it(tmp_path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    save_file(
        {
            "pre_bias": torch.zeros(4),
            "latent_bias": torch.zeros(8),
            "encoder.weight": torch.randn(8, 4),
            "decoder.weight": torch.randn(4, 8),
        },
        str(folder / "state_dict.safetensors"),
    )
    with pytest.raises(ConfigError, match="pass k="):
        Sae.load_from_disk(folder)
    assert Sae.load_from_disk(folder, k=2).cfg.k == 2


def test_unknown_format_and_empty_folder(tmp_path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'sparsify'"):
        SAE_FORMATS.get("sparsfy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no SAE checkpoint"):
        Sae.load_from_disk(tmp_path / "empty")


def test_a_root_of_several_hookpoints_needs_one_named_and_a_root_of_one_does_not(
    tmp_path,
) -> None:
    for hookpoint in ("unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"):
        Sae(SaeConfig(d_in=8, expansion_factor=2, k=2)).save_to_disk(tmp_path / "two" / hookpoint)
    with pytest.raises(ConfigError, match="^hookpoint: .*attentions.1, unet.up_blocks.1.att"):
        Sae.from_pretrained(tmp_path / "two")
    with pytest.raises(ConfigError, match="^hookpoint: .* no SAE checkpoint"):
        Sae.from_pretrained(tmp_path)
    one = tmp_path / "one" / "unet.mid_block.attentions.0"
    Sae(SaeConfig(d_in=8, expansion_factor=2, k=2)).save_to_disk(one)
    sae = Sae.from_pretrained(tmp_path / "one")
    assert sae.meta["hookpoint"] == "unet.mid_block.attentions.0" and sae.num_latents == 16


def test_save_pretrained_and_push_to_hub_keep_every_hookpoint_with_a_card(
    tmp_path, monkeypatch
) -> None:
    from helpers.hub import FakeHub

    from saeuron.utils.cards import read_card_metadata

    hub = FakeHub(tmp_path).install(monkeypatch)
    first, second = make_sae(), make_sae(expansion=2)
    first.meta.update(model="owner/base-model", data="40 prompts of cats",
                      training={"heldout_fvu": 0.25, "tokens": 4096})  # fmt: skip
    folder = first.save_pretrained(tmp_path / "local", "unet.up_blocks.1.attentions.1")
    assert folder == tmp_path / "local" / "unet.up_blocks.1.attentions.1"
    card = (tmp_path / "local" / "README.md").read_text(encoding="utf-8")
    for fact in ("`unet.up_blocks.1.attentions.1`", "| 3 |", "0.250", "4,096", "40 prompts of cats",
                 "owner/base-model", "`mit` licence"):  # fmt: skip
        assert fact in card, fact
    meta = read_card_metadata(tmp_path / "local" / "README.md")
    assert (meta["license"], meta["base_model"], meta["library_name"]) == (
        "mit", "owner/base-model", "saeuron"
    )  # fmt: skip
    local = Sae.from_pretrained(tmp_path / "local", hookpoint="unet.up_blocks.1.attentions.1")
    assert torch.equal(local.W_dec, first.W_dec)

    url = first.push_to_hub("me/saes", "unet.up_blocks.1.attentions.1")
    second.push_to_hub("me/saes", "unet.up_blocks.1.attentions.2", license="apache-2.0")
    assert url.startswith("https://hub.example/me/saes/commit/")
    assert hub.files("me/saes") == [
        "README.md",
        *(f"unet.up_blocks.1.attentions.{i}/{f}" for i in (1, 2)
          for f in ("cfg.json", "sae.safetensors", "saeuron.json")),
    ]  # fmt: skip
    card = (hub.remote / "me/saes" / "README.md").read_text(encoding="utf-8")
    assert "attentions.1`" in card and "attentions.2`" in card  # both described
    pulled = Sae.from_pretrained("me/saes", hookpoint="unet.up_blocks.1.attentions.2")
    assert torch.equal(pulled.encoder.weight, second.encoder.weight)
    assert pulled.meta["source"] == "me/saes"
    with pytest.raises(ConfigError, match="^repo_id:"):
        first.push_to_hub("not a repo id", "unet.up_blocks.1.attentions.1")
