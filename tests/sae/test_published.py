"""The published SAE checkpoints load as published: each fixture is written the way its
publisher's code writes it (file names, nesting, key names and order, extra buffers, config
keys, dtypes, CUDA storage tags), at small sizes, and our encode/decode is checked against
the publisher's formula computed here from the raw tensors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model
from torch import nn

from saeuron.erasure.features import ConceptFeatures
from saeuron.sae import Sae
from saeuron.utils.config import ConfigError

UP11, UP12 = "unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"
UNBOX_HOOKPOINTS = (
    "unet.down_blocks.2.attentions.1",
    "unet.mid_block.attentions.0",
    "unet.up_blocks.0.attentions.0",
    "unet.up_blocks.0.attentions.1",
)


@pytest.fixture
def cuda_tags(monkeypatch):
    """torch.save as on the publishers' GPUs: every storage tagged ``cuda:0``."""
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")


# -- SAeUron (EleutherAI sae layout) --------------------------------------------------------------


class EleutherSae(nn.Module):
    """The parameters of SAeUron's ``Sae``, registered in its order (encoder, W_dec, b_dec)."""

    def __init__(self, d_in: int, num_latents: int, generator, dtype=torch.float32):
        super().__init__()
        self.encoder = nn.Linear(d_in, num_latents, dtype=dtype)
        self.W_dec = nn.Parameter(torch.randn(num_latents, d_in, generator=generator).to(dtype))
        self.b_dec = nn.Parameter((torch.randn(d_in, generator=generator) * 0.1).to(dtype))
        with torch.no_grad():
            self.encoder.weight.copy_(torch.randn(num_latents, d_in, generator=generator))
            self.encoder.bias.copy_(torch.randn(num_latents, generator=generator) * 0.1)
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)


def saeuron_cfg(d_in: int, expansion: int, k: int) -> dict:
    # SAeUron's SaeConfig.to_dict() in field order, then d_in; values of its training command.
    return {
        "expansion_factor": expansion,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": k,
        "batch_topk": True,
        "sample_topk": False,
        "input_unit_norm": False,
        "multi_topk": False,
        "d_in": d_in,
    }


def write_eleuther(folder: Path, d_in: int, expansion: int, k: int, seed: int, dtype=torch.float32):
    """What SAeUron's (and SAEmnesia's) ``Sae.save_to_disk`` writes."""
    folder.mkdir(parents=True, exist_ok=True)
    module = EleutherSae(d_in, d_in * expansion, torch.Generator().manual_seed(seed), dtype)
    save_model(module, str(folder / "sae.safetensors"))
    with open(folder / "cfg.json", "w") as f:
        json.dump(saeuron_cfg(d_in, expansion, k), f)
    return {name: p.detach().clone() for name, p in module.state_dict().items()}


def write_hub_files(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n")


def topk_reference(x, w_enc, b_enc, b_dec, w_dec_rows, k, relu_first=True):
    """Dense TopK code and reconstruction, token by token, as the publishers write them."""
    codes, recons = [], []
    for token in x:
        pre = w_enc @ (token - b_dec) + b_enc
        if relu_first:  # SAeUron/SAEmnesia: topk(relu(pre))
            pre = torch.relu(pre)
            values, indices = pre.topk(k)
        else:  # sdxl-unbox: relu(topk(pre))
            values, indices = pre.topk(k)
            values = torch.relu(values)
        z = torch.zeros_like(pre)
        z[indices] = values
        codes.append(z)
        recons.append(z @ w_dec_rows + b_dec)
    return torch.stack(codes), torch.stack(recons)


def assert_matches(sae: Sae, x, code, recon):
    torch.testing.assert_close(sae.encode_dense(x), code)
    torch.testing.assert_close(sae(x).sae_out, recon, rtol=1e-5, atol=1e-5)


def test_saeuron_repo_with_two_hookpoints_loads_each(tmp_path) -> None:
    repo = tmp_path / "bcywinski--SAeUron"
    write_hub_files(repo)
    tensors = {
        UP11: write_eleuther(repo / UP11, d_in=16, expansion=4, k=4, seed=1),
        UP12: write_eleuther(repo / UP12, d_in=16, expansion=4, k=4, seed=2),
    }
    write_eleuther(repo / "coco", d_in=16, expansion=4, k=4, seed=3)
    assert json.loads((repo / UP11 / "cfg.json").read_text()) == saeuron_cfg(16, 4, 4)
    x = torch.randn(12, 16, generator=torch.Generator().manual_seed(9))
    for hookpoint, t in tensors.items():
        sae = Sae.from_pretrained(repo, hookpoint=hookpoint)
        assert (sae.d_in, sae.num_latents, sae.cfg.k) == (16, 64, 4)
        assert sae.meta["hookpoint"] == hookpoint and sae.dtype == torch.float32
        code, recon = topk_reference(
            x, t["encoder.weight"], t["encoder.bias"], t["b_dec"], t["W_dec"], 4
        )
        assert_matches(sae, x, code, recon)
    # The two folders hold different SAEs: each hookpoint got its own.
    a = Sae.from_pretrained(repo, hookpoint=UP11).encode_dense(x)
    b = Sae.from_pretrained(repo, hookpoint=UP12).encode_dense(x)
    assert not torch.equal(a, b)
    # The bundled COCO folder of the same repo is a plain checkpoint folder.
    assert Sae.from_pretrained(repo / "coco", hookpoint=UP11).meta["hookpoint"] == UP11


def test_saeuron_coco_repo_and_half_precision_file(tmp_path) -> None:
    repo = tmp_path / "bcywinski--SAeUron_coco"
    write_hub_files(repo)
    t = write_eleuther(repo / UP11, d_in=8, expansion=8, k=3, seed=4, dtype=torch.float16)
    sae = Sae.from_pretrained(repo, hookpoint=UP11)
    assert sae.dtype == torch.float16 and sae.num_latents == 64
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    code, _ = topk_reference(
        x.half().float(), *(t[k].float() for k in ("encoder.weight", "encoder.bias", "b_dec")),
        t["W_dec"].float(), 3,
    )  # fmt: skip
    assert torch.equal(
        sae.encode(x).top_indices.sort(-1).values, code.topk(3).indices.sort(-1).values
    )
    with pytest.raises(FileNotFoundError, match=f"available: {UP11}"):
        Sae.from_pretrained(repo, hookpoint=UP12)


def test_saeuron_hub_download_fetches_only_the_hookpoint(tmp_path, monkeypatch) -> None:
    hub = tmp_path / "snapshot"
    write_hub_files(hub)
    write_eleuther(hub / UP11, 8, 2, 2, seed=5)
    calls = []

    def fake(repo_id, allow_patterns=None, revision=None, cache_dir=None):
        calls.append(allow_patterns)
        return str(hub)

    import saeuron.utils.hub

    monkeypatch.setattr(saeuron.utils.hub, "snapshot_download", fake)
    sae = Sae.from_pretrained("bcywinski/SAeUron", hookpoint=UP11)
    assert calls == [[f"{UP11}/*", f"{UP11}_k*"]]
    assert sae.meta["source"] == "bcywinski/SAeUron" and sae.num_latents == 16


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: (f / "cfg.json").write_text("{not json"), "cfg.json: not a readable JSON"),
        (lambda f: (f / "cfg.json").write_text("[1, 2]"), "cfg.json: expected a JSON object"),
        (lambda f: (f / "cfg.json").write_text('{"k": 2}'), "neither 'd_in' nor 'd_model'"),
        (lambda f: (f / "cfg.json").write_text('{"d_in": 8, "k": 99, "num_latents": 16}'), "k:"),
        (
            lambda f: (f / "cfg.json").write_text('{"d_in": 8, "skip_connection": true}'),
            "skip_connection is set",
        ),
        (lambda f: (f / "sae.safetensors").write_bytes(b"garbage"), "sae.safetensors: not a"),
        (
            lambda f: (f / "cfg.json").write_text(json.dumps(saeuron_cfg(8, 4, 2))),
            r"sae.safetensors: encoder.weight has shape \(16, 8\), the config implies \(32, 8\)",
        ),
    ],
)
def test_broken_saeuron_files_give_one_line_errors_naming_the_file(tmp_path, edit, message):
    folder = tmp_path / UP11
    write_eleuther(folder, 8, 2, 2, seed=6)
    edit(folder)
    with pytest.raises(ValueError, match=message) as info:
        Sae.load_from_disk(folder)
    assert "\n" not in str(info.value) and not isinstance(info.value, KeyError)


def test_missing_tensor_is_named(tmp_path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "s"
    tensors = write_eleuther(folder, 8, 2, 2, seed=6)
    del tensors["b_dec"]
    save_file(tensors, str(folder / "sae.safetensors"))
    with pytest.raises(ValueError, match=r"sae.safetensors: .*missing \['b_dec'\]"):
        Sae.load_from_disk(folder)


# -- SAEmnesia (cfg.json at the repo root) -------------------------------------------------------


class SdxlUnboxSae(nn.Module):
    """sdxl-unbox's ``SparseAutoencoder`` parameters, registered in its order."""

    def __init__(self, n_dirs: int, d_model: int, generator):
        super().__init__()
        self.encoder = nn.Linear(d_model, n_dirs, bias=False)
        self.decoder = nn.Linear(n_dirs, d_model, bias=False)
        self.pre_bias = nn.Parameter(torch.randn(d_model, generator=generator) * 0.1)
        self.latent_bias = nn.Parameter(torch.randn(n_dirs, generator=generator) * 0.1)
        self.register_buffer("stats_last_nonzero", torch.zeros(n_dirs, dtype=torch.long))
        with torch.no_grad():
            self.encoder.weight.copy_(torch.randn(n_dirs, d_model, generator=generator))
            # "tied" init, then the decoder kept in column-major layout, unit columns.
            self.decoder.weight.data = self.encoder.weight.data.T.clone().T.contiguous().T
            self.decoder.weight.data /= self.decoder.weight.data.norm(dim=0)
            self.stats_last_nonzero.copy_(torch.randint(0, 5000, (n_dirs,), generator=generator))


def unbox_config(n: int, d: int, k: int) -> dict:
    return {"n_dirs_local": n, "d_model": d, "k": k, "auxk": 256, "dead_steps_threshold": 2441}


def write_unbox_weights(folder: Path, n: int, d: int, seed: int) -> dict:
    """``torch.save({"state_dict": model.state_dict()})`` of a model living on the GPU."""
    folder.mkdir(parents=True, exist_ok=True)
    module = SdxlUnboxSae(n, d, torch.Generator().manual_seed(seed))
    torch.save({"state_dict": module.state_dict()}, folder / "state_dict.pth")
    return {k: v.clone() for k, v in module.state_dict().items()}


def write_saemnesia_download(root: Path, weights: str, seed: int = 7) -> dict:
    """``scripts/download_checkpoint.py``: the hub repo saved into ``<dir>/<hookpoint>/``."""
    folder = root / UP11
    write_hub_files(folder)
    cache = folder / ".cache" / "huggingface"
    (cache / "download").mkdir(parents=True)
    (cache / ".gitignore").write_text("*")
    if weights == "safetensors":
        tensors = write_eleuther(folder, d_in=16, expansion=4, k=4, seed=seed)
        names = ["cfg.json", "sae.safetensors"]
    else:
        raw = write_unbox_weights(folder, n=64, d=16, seed=seed)
        with open(folder / "cfg.json", "w") as f:
            json.dump(unbox_config(64, 16, 4), f)
        tensors = {
            "encoder.weight": raw["encoder.weight"],
            "encoder.bias": raw["latent_bias"],
            "W_dec": raw["decoder.weight"].T,
            "b_dec": raw["pre_bias"],
        }
        names = ["cfg.json", "state_dict.pth"]
    for name in [*names, ".gitattributes", "README.md"]:
        (cache / "download" / f"{name}.metadata").write_text("0" * 40 + "\n" + "1" * 40 + "\n1.0\n")
    return tensors


@pytest.mark.parametrize("weights", ["safetensors", "state_dict.pth"])
def test_saemnesia_download_loads_and_encodes_as_its_loader(tmp_path, weights, cuda_tags):
    t = write_saemnesia_download(tmp_path / "sae_checkpoint", weights)
    sae = Sae.from_pretrained(tmp_path / "sae_checkpoint", hookpoint=UP11)
    assert (sae.d_in, sae.num_latents, sae.cfg.k, sae.meta["hookpoint"]) == (16, 64, 4, UP11)
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(3))
    code, recon = topk_reference(
        x, t["encoder.weight"], t["encoder.bias"], t["b_dec"], t["W_dec"], 4
    )
    assert_matches(sae, x, code, recon)
    # Also from the hookpoint folder itself, as SAEmnesia's scripts pass it.
    assert Sae.load_from_disk(tmp_path / "sae_checkpoint" / UP11).num_latents == 64


def test_saemnesia_flat_state_dict_and_d_in_with_d_model(tmp_path) -> None:
    folder = tmp_path / UP11
    raw = write_unbox_weights(folder, n=32, d=8, seed=2)
    torch.save(raw, folder / "state_dict.pth")  # flat: raw.get("state_dict", raw)
    # d_in wins over d_model; n_dirs_local stands for num_latents; the rest is dropped.
    (folder / "cfg.json").write_text(
        json.dumps({"d_in": 8, "d_model": 999, "n_dirs_local": 32, "k": 3, "auxk": 16})
    )
    sae = Sae.load_from_disk(folder)
    assert (sae.d_in, sae.num_latents, sae.cfg.k) == (8, 32, 3)
    torch.testing.assert_close(sae.W_dec, raw["decoder.weight"].T)


def test_saemnesia_from_the_hub_reads_the_root_files(tmp_path, monkeypatch) -> None:
    hub = tmp_path / "snapshot"
    write_hub_files(hub)
    write_eleuther(hub, d_in=8, expansion=2, k=2, seed=1)  # cfg.json at the repo root
    calls = []

    def fake(repo_id, allow_patterns=None, revision=None, cache_dir=None):
        calls.append(allow_patterns)
        return str(hub)

    import saeuron.utils.hub

    monkeypatch.setattr(saeuron.utils.hub, "snapshot_download", fake)
    sae = Sae.from_pretrained("leno3003/SAEmnesia", hookpoint=UP11)
    assert calls[0] == [f"{UP11}/*", f"{UP11}_k*"] and "cfg.json" in calls[1]
    assert "README.md" not in calls[1] and sae.meta["hookpoint"] == UP11


def test_saemnesia_pth_with_unknown_keys_or_objects_is_refused(tmp_path) -> None:
    folder = tmp_path / "s"
    raw = write_unbox_weights(folder, n=16, d=8, seed=1)
    (folder / "cfg.json").write_text(json.dumps(unbox_config(16, 8, 2)))
    torch.save({"state_dict": {**raw, "W_skip": torch.zeros(8, 8)}}, folder / "state_dict.pth")
    with pytest.raises(ValueError, match=r"state_dict.pth: .*unexpected \['W_skip'\]"):
        Sae.load_from_disk(folder)
    torch.save({"state_dict": raw, "args": pickle.PickleError("x")}, folder / "state_dict.pth")
    with pytest.raises(ValueError, match="state_dict.pth: holds objects other than tensors"):
        Sae.load_from_disk(folder)


# -- sdxl-unbox ---------------------------------------------------------------------------------


def unbox_run_name(hookpoint: str, k: int, n: int) -> str:
    return f"{hookpoint}_k{k}_hidden{n}_auxk256_bs4096_lr0.0001"


def write_unbox_checkpoints(root: Path, n: int = 64, d: int = 16, k: int = 4) -> dict:
    """sdxl-unbox's ``checkpoints/``: four runs, each ``final/`` as ``save_to_disk`` writes
    it, plus the per-latent ``mean.pt`` / ``std.pt`` saved from the GPU."""
    out = {}
    for i, hookpoint in enumerate(UNBOX_HOOKPOINTS):
        folder = root / unbox_run_name(hookpoint, k, n) / "final"
        raw = write_unbox_weights(folder, n, d, seed=10 + i)
        with open(folder / "config.json", "w") as f:
            json.dump(unbox_config(n, d, k), f)
        g = torch.Generator().manual_seed(20 + i)
        mean, std = torch.rand(n, generator=g) * 40, torch.rand(n, generator=g) * 20
        mean[0] = std[0] = 0.0  # a dead latent, as in the published files
        torch.save(mean, folder / "mean.pt")
        torch.save(std, folder / "std.pt")
        out[hookpoint] = {**raw, "mean": mean, "std": std}
    return out


def test_unbox_files_are_written_as_published(tmp_path, cuda_tags) -> None:
    write_unbox_checkpoints(tmp_path / "checkpoints", n=64, d=16, k=4)
    final = tmp_path / "checkpoints" / unbox_run_name(UNBOX_HOOKPOINTS[3], 4, 64) / "final"
    assert sorted(p.name for p in final.iterdir()) == [
        "config.json", "mean.pt", "state_dict.pth", "std.pt"
    ]  # fmt: skip
    config = (final / "config.json").read_text()
    assert config == (
        '{"n_dirs_local": 64, "d_model": 16, "k": 4, "auxk": 256, "dead_steps_threshold": 2441}'
    )
    raw = torch.load(final / "state_dict.pth", map_location="cpu", weights_only=True)
    assert list(raw) == ["state_dict"]
    assert list(raw["state_dict"]) == [
        "pre_bias", "latent_bias", "stats_last_nonzero", "encoder.weight", "decoder.weight"
    ]  # fmt: skip
    assert raw["state_dict"]["stats_last_nonzero"].dtype == torch.long
    assert raw["state_dict"]["decoder.weight"].stride() == (1, 16)  # column-major, as saved
    if not torch.cuda.is_available():  # the storages say cuda:0, like the published ones
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(final / "mean.pt", weights_only=True)


def test_unbox_checkpoints_load_per_hookpoint_and_encode_as_published(tmp_path, cuda_tags):
    published = write_unbox_checkpoints(tmp_path / "checkpoints", n=64, d=16, k=4)
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(5)) * 3
    for hookpoint in UNBOX_HOOKPOINTS:
        sae = Sae.from_pretrained(tmp_path / "checkpoints", hookpoint=hookpoint)
        raw = published[hookpoint]
        assert sae.meta["hookpoint"] == hookpoint and sae.meta["activation_site"] == "update"
        assert (sae.d_in, sae.num_latents, sae.cfg.k) == (16, 64, 4)
        assert sae.meta["sdxl_unbox"] == {"auxk": 256, "dead_steps_threshold": 2441}
        code, recon = topk_reference(
            x, raw["encoder.weight"], raw["latent_bias"], raw["pre_bias"],
            raw["decoder.weight"].T, 4, relu_first=False,
        )  # fmt: skip
        assert_matches(sae, x, code, recon)
        torch.testing.assert_close(sae.latent_mean, raw["mean"])
        torch.testing.assert_close(sae.latent_std, raw["std"])
    # The folder of one run (or its final/) loads directly too.
    run = tmp_path / "checkpoints" / unbox_run_name(UNBOX_HOOKPOINTS[0], 4, 64)
    assert Sae.load_from_disk(run / "final").meta["hookpoint"] == UNBOX_HOOKPOINTS[0]
    with pytest.raises(
        FileNotFoundError, match="available: " + ", ".join(sorted(UNBOX_HOOKPOINTS))
    ):
        Sae.from_pretrained(tmp_path / "checkpoints", hookpoint="unet.up_blocks.1.attentions.1")


def test_unbox_latent_stats_follow_the_sae(tmp_path, cuda_tags) -> None:
    write_unbox_checkpoints(tmp_path / "c", n=32, d=8, k=2)
    sae = Sae.from_pretrained(tmp_path / "c", hookpoint=UNBOX_HOOKPOINTS[3], dtype=torch.float16)
    assert sae.latent_mean.dtype == torch.float16 and sae.latent_mean.shape == (32,)
    assert "latent_mean" not in sae.state_dict()  # not part of the weights we save


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: (f / "config.json").write_text("{"), "config.json: not a readable JSON"),
        (
            lambda f: (f / "config.json").write_text(json.dumps(unbox_config(99, 8, 2))),
            "config.json: n_dirs_local is 99 but state_dict.pth holds 32",
        ),
        (lambda f: (f / "state_dict.pth").write_bytes(b"\x00garbage"), "state_dict.pth: not a"),
        (
            lambda f: torch.save(
                {"state_dict": {"encoder.weight": torch.zeros(32, 8)}}, f / "state_dict.pth"
            ),
            r"state_dict.pth: .*missing \['decoder.weight', 'pre_bias', 'latent_bias'\]",
        ),  # fmt: skip
        (
            lambda f: torch.save({"state_dict": [1, 2]}, f / "state_dict.pth"),
            "state_dict.pth: expected a dict of tensors, got list",
        ),
        (lambda f: torch.save(torch.zeros(31), f / "mean.pt"), r"mean.pt: expected a tensor of"),
        (
            lambda f: (f / "config.json").write_text(
                json.dumps({**unbox_config(32, 8, 2), "k": 0})
            ),
            "k is 0",
        ),
    ],
)
def test_broken_unbox_files_give_one_line_errors(tmp_path, edit, message) -> None:
    write_unbox_checkpoints(tmp_path / "c", n=32, d=8, k=2)
    folder = tmp_path / "c" / unbox_run_name(UNBOX_HOOKPOINTS[0], 2, 32) / "final"
    edit(folder)
    with pytest.raises(ValueError, match=message) as info:
        Sae.load_from_disk(folder)
    assert "\n" not in str(info.value)


def test_unbox_k_from_run_name_when_config_is_absent(tmp_path) -> None:
    write_unbox_checkpoints(tmp_path / "c", n=32, d=8, k=3)
    folder = tmp_path / "c" / unbox_run_name(UNBOX_HOOKPOINTS[1], 3, 32) / "final"
    (folder / "config.json").unlink()
    assert Sae.load_from_disk(folder).cfg.k == 3
    assert Sae.load_from_disk(folder, k=5).cfg.k == 5
    plain = tmp_path / "plain"
    write_unbox_weights(plain, 16, 8, seed=0)
    with pytest.raises(ConfigError, match="pass k="):
        Sae.load_from_disk(plain)


def test_unbox_sae_edits_the_block_update_on_sdxl(tmp_path, tiny_sdxl) -> None:
    """sdxl-unbox's activation site is the block's update (output - input): the erasure
    encodes that, and adds ``(gamma - 1) a_f W_dec[f]`` to the block's output."""
    from saeuron import erase

    hookpoint = "unet.up_blocks.0.attentions.1"  # 32 channels in the tiny SDXL
    root = tmp_path / "checkpoints"
    folder = root / unbox_run_name(hookpoint, 4, 64) / "final"
    raw = write_unbox_weights(folder, n=64, d=32, seed=3)
    (folder / "config.json").write_text(json.dumps(unbox_config(64, 32, 4)))
    sae = Sae.from_pretrained(root, hookpoint=hookpoint)
    module = tiny_sdxl.unet.get_submodule(hookpoint.removeprefix("unet."))
    seen: dict[str, list[torch.Tensor]] = {"in": [], "out": [], "edited": []}

    def before(mod, args, kwargs, output):
        seen["in"].append(args[0].detach().clone())
        seen["out"].append(output[0].detach().clone())

    def after(mod, args, kwargs, output):
        seen["edited"].append(output[0].detach().clone())

    # Pick the latent that fires most on the first call's update.
    probe = module.register_forward_hook(before, with_kwargs=True)
    tiny_sdxl("a cat", num_inference_steps=1, guidance_scale=0.0, output_type="latent")
    probe.remove()
    update = (seen["out"][0] - seen["in"][0]).permute(0, 2, 3, 1).reshape(-1, 32)
    latent = int(sae.encode_dense(update).sum(0).argmax())
    for value in seen.values():
        value.clear()

    concept = ConceptFeatures.from_latents("x", [latent], mean=1.0, threshold=0.0)
    first = module.register_forward_hook(before, with_kwargs=True)
    with erase(tiny_sdxl, sae, concept, multiplier=-3.0, guidance_half="both"):
        last = module.register_forward_hook(after, with_kwargs=True)
        tiny_sdxl("a cat", num_inference_steps=1, guidance_scale=0.0, output_type="latent")
    first.remove()
    last.remove()
    x_in, x_out, edited = seen["in"][0], seen["out"][0], seen["edited"][0]
    tokens = (x_out - x_in).permute(0, 2, 3, 1).reshape(-1, 32)
    code, _ = topk_reference(
        tokens, raw["encoder.weight"], raw["latent_bias"], raw["pre_bias"],
        raw["decoder.weight"].T, 4, relu_first=False,
    )  # fmt: skip
    a = code[:, latent : latent + 1]
    assert (a > 0).any()
    expected = x_out + ((-3.0 - 1.0) * a * raw["decoder.weight"].T[latent]).reshape(
        x_out.shape[0], x_out.shape[2], x_out.shape[3], 32
    ).permute(0, 3, 1, 2)
    torch.testing.assert_close(edited, expected, rtol=1e-4, atol=1e-4)
    assert not torch.equal(edited, x_out)


def test_unreadable_provenance_file_is_named(tmp_path) -> None:
    write_eleuther(tmp_path / "s", 8, 2, 2, seed=1)
    (tmp_path / "s" / "saeuron.json").write_text("{oops")
    with pytest.raises(ValueError, match="saeuron.json: not a readable JSON file"):
        Sae.load_from_disk(tmp_path / "s")
