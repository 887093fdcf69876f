"""SAE training: learning planted features, the paper's training details, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.shards import planted_features, write_synthetic_shards

from saeuron.cli.main import build_parser, main
from saeuron.sae import Sae
from saeuron.training.shards import ActivationShards
from saeuron.training.trainer import (
    STATE_DIR,
    STATE_FILE,
    TRAIN_LOG,
    TrainConfig,
    Trainer,
    geometric_median,
    train_sae,
)
from saeuron.utils.config import ConfigError

HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    # These matrices are tiny: a second thread buys nothing, and on a shared 2-core machine
    # its spin-waits made runs 5x slower. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_cfg(activations: Path, out: Path, **overrides: object) -> TrainConfig:
    """Small, fast settings; tests override what they exercise."""
    base: dict[str, object] = dict(
        activations=str(activations),
        out=str(out),
        k=4,
        expansion_factor=4,
        lr=5e-3,
        batch_size=256,
        epochs=2,
        heldout_fraction=0.2,
        device="cpu",
    )
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def small_capture(tmp_path: Path) -> Path:
    x, _ = planted_features(3000, d=16, n_features=32, active=2, seed=1)
    return write_synthetic_shards(tmp_path / "acts", x, shard_tokens=600)


# -- learning -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, torch.Tensor]:
    # 128 unit directions in 64 dims, 3 active per token: a dictionary the SAE can recover.
    root = tmp_path_factory.mktemp("planted")
    x, directions = planted_features(24_000, d=64, n_features=128, active=3, seed=0)
    acts = write_synthetic_shards(root / "acts", x, shard_tokens=4800)
    cfg = make_cfg(acts, root / "out", expansion_factor=8, lr=1e-2, epochs=5)
    trainer = Trainer(cfg)
    trainer.train()
    return trainer, directions


def test_training_recovers_planted_features(planted_run: tuple[Trainer, torch.Tensor]) -> None:
    trainer, directions = planted_run
    final = trainer.log[-1]
    assert trainer.first_batch_fvu is not None and trainer.first_batch_fvu > 0.5
    assert final["heldout_fvu"] < 0.2
    assert final["heldout_fvu"] < trainer.first_batch_fvu / 5
    # FVU falls epoch over epoch (held-out, so it is not memorisation).
    heldout = [r["heldout_fvu"] for r in trainer.log]
    assert heldout[-1] < heldout[0]
    cos = directions @ trainer.sae.W_dec.detach().T
    recovered = (cos.max(dim=1).values > 0.9).float().mean().item()
    assert recovered >= 0.9, f"only {recovered:.0%} of planted directions recovered"


def test_decoder_rows_stay_unit_norm(planted_run: tuple[Trainer, torch.Tensor]) -> None:
    norms = planted_run[0].sae.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)


def test_train_log_and_sparsify_checkpoint(planted_run: tuple[Trainer, torch.Tensor]) -> None:
    trainer, _ = planted_run
    folder = trainer.out_dir
    assert folder.name == HOOK
    for name in ("cfg.json", "sae.safetensors", "saeuron.json", TRAIN_LOG):
        assert (folder / name).is_file(), name
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["d_in"] == 64 and cfg["num_latents"] == 512 and cfg["k"] == 4
    assert cfg["batch_topk"] is True and cfg["input_unit_norm"] is False

    loaded = Sae.load_from_disk(folder)
    for name, tensor in trainer.sae.state_for_disk().items():
        assert torch.equal(loaded.state_for_disk()[name], tensor), name
    assert loaded.meta["hookpoint"] == HOOK
    assert loaded.meta["model"] == "synthetic"
    assert loaded.meta["d_in"] == 64
    assert loaded.meta["activation_site"] == "output"
    assert loaded.meta["training"]["epochs_done"] == 5
    assert loaded.meta["training"]["heldout_fvu"] == trainer.log[-1]["heldout_fvu"]

    log = json.loads((folder / TRAIN_LOG).read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1, 2, 3, 4, 5]
    for record in log["epochs"]:
        assert {"train_fvu", "heldout_fvu", "dead_latents", "tokens", "seconds"} <= set(record)
    assert log["heldout_note"] is None and log["heldout_tokens"] == 4800


# -- the paper's training details ------------------------------------------------------------


def test_geometric_median_known_case() -> None:
    # The geometric median of a convex quadrilateral's vertices is where its diagonals cross;
    # the far vertex (5, 5) drags the mean but not the median.
    points = torch.tensor([[0.0, 0.0], [4.0, 0.0], [5.0, 5.0], [0.0, 2.0]])
    median = geometric_median(points)
    torch.testing.assert_close(median, torch.tensor([4 / 3, 4 / 3]), atol=1e-4, rtol=0)
    assert (points.mean(0) - median).norm() > 1.0


def test_geometric_median_matches_brute_force_with_outliers() -> None:
    gen = torch.Generator().manual_seed(0)
    cluster = torch.randn(200, 2, generator=gen) * 0.5 + torch.tensor([1.0, -1.0])
    outliers = torch.randn(20, 2, generator=gen) * 0.5 + torch.tensor([40.0, 30.0])
    points = torch.cat([cluster, outliers]).double()

    def cost(z: torch.Tensor) -> torch.Tensor:
        return (points[None] - z[:, None]).norm(dim=-1).sum(-1)

    # Two-stage grid search for the minimiser of the summed distance.
    grid = torch.stack(torch.meshgrid(
        torch.linspace(-10, 50, 121, dtype=torch.float64),
        torch.linspace(-10, 50, 121, dtype=torch.float64),
        indexing="ij",
    ), dim=-1).reshape(-1, 2)  # fmt: skip
    coarse = grid[cost(grid).argmin()]
    fine = coarse + torch.stack(torch.meshgrid(
        torch.linspace(-0.5, 0.5, 201, dtype=torch.float64),
        torch.linspace(-0.5, 0.5, 201, dtype=torch.float64),
        indexing="ij",
    ), dim=-1).reshape(-1, 2)  # fmt: skip
    brute = fine[cost(fine).argmin()]

    median = geometric_median(points.float()).double()
    assert (median - brute).norm() < 5e-3
    assert cost(median[None]) <= cost(brute[None]) + 1e-3
    # Median != mean here: the outliers pull the mean far from the cluster.
    assert (points.mean(0) - median).norm() > 3.0


def test_first_step_initialises_b_dec_to_geometric_median(
    small_capture: Path, tmp_path: Path
) -> None:
    trainer = Trainer(make_cfg(small_capture, tmp_path / "out", lr=1e-7))
    x = next(trainer.iter_batches(0)).float()
    trainer.step(x)
    # Adam moves each coordinate by about lr on the first step.
    torch.testing.assert_close(trainer.sae.b_dec.detach(), geometric_median(x), atol=1e-5, rtol=0)
    assert not torch.allclose(geometric_median(x), x.mean(0), atol=1e-3)


def test_lr_decays_linearly_to_zero(small_capture: Path, tmp_path: Path) -> None:
    trainer = Trainer(make_cfg(small_capture, tmp_path / "out", lr=1e-3))
    assert trainer.lr_at(0) == pytest.approx(1e-3)
    assert trainer.lr_at(trainer.total_steps // 2) == pytest.approx(
        1e-3 * (1 - (trainer.total_steps // 2) / trainer.total_steps)
    )
    assert 0 < trainer.lr_at(trainer.total_steps - 1) < 1e-3 / trainer.total_steps * 1.01


def test_dead_latent_counting_and_auxk(small_capture: Path, tmp_path: Path) -> None:
    trainer = Trainer(make_cfg(small_capture, tmp_path / "out", dead_tokens=256))
    with torch.no_grad():
        trainer.sae.encoder.bias[0] = -1e4  # latent 0 can never fire
    batches = trainer.iter_batches(0)

    first = trainer.step(next(batches))
    assert float(first.auxk_loss) == 0.0  # nothing can be dead before dead_tokens tokens
    fired = torch.zeros(trainer.sae.num_latents, dtype=torch.bool)
    fired[first.latent_indices[first.latent_acts > 0]] = True
    expected = torch.where(fired, 0, 256)
    assert torch.equal(trainer.tokens_since_fired, expected)
    assert trainer.num_dead() == int((~fired).sum()) > 0
    assert not fired[0]

    second = trainer.step(next(batches))
    assert float(second.auxk_loss.detach()) > 0.0
    for _ in range(3):
        trainer.step(next(batches))
    assert int(trainer.tokens_since_fired[0]) == 5 * 256


def test_auxk_trains_dead_latents(small_capture: Path, tmp_path: Path) -> None:
    # Latents left out of BatchTopK get no gradient from the FVU; only AuxK reaches them.
    def dead_grad(alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = make_cfg(
            small_capture,
            tmp_path / str(alpha),
            dead_tokens=256,
            auxk_alpha=alpha,
            k=1,
            expansion_factor=16,
        )
        trainer = Trainer(cfg)
        batches = trainer.iter_batches(0)
        trainer.step(next(batches))
        dead = trainer.tokens_since_fired >= 256
        out = trainer.step(next(batches))
        fired = torch.zeros_like(dead)
        fired[out.latent_indices[out.latent_acts > 0]] = True
        silent = dead & ~fired
        assert silent.any()
        grad = trainer.sae.encoder.weight.grad
        assert grad is not None
        return grad[silent].abs().sum(dim=1), out.auxk_loss.detach()

    with_auxk, loss = dead_grad(1 / 32)
    without, _ = dead_grad(0.0)
    assert float(loss) > 0
    assert (with_auxk > 0).any()
    assert torch.all(without == 0)


def test_heldout_fvu_is_the_fvu_of_the_whole_set(small_capture: Path, tmp_path: Path) -> None:
    trainer = Trainer(make_cfg(small_capture, tmp_path / "out", batch_size=100))
    x = torch.cat([trainer.data.load(s) for s in trainer.heldout_shards]).float().double()
    with torch.no_grad():
        recon = trainer.sae(x.float()).sae_out.double()
    expected = (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert trainer.evaluate(trainer.heldout_shards) == pytest.approx(float(expected), rel=1e-5)
    assert trainer.evaluate([]) is None


# -- data streaming --------------------------------------------------------------------------


def test_batches_stream_shuffled_and_bounded(tmp_path: Path) -> None:
    n, d = 2400, 4
    x = torch.zeros(n, d)
    x[:, 0] = torch.arange(n, dtype=torch.float32)  # token id, to trace where tokens go
    acts = write_synthetic_shards(tmp_path / "acts", x, shard_tokens=400, dtype=torch.float32)
    trainer = Trainer(
        make_cfg(acts, tmp_path / "out", batch_size=128, heldout_fraction=0.0, shuffle_shards=2)
    )
    loads: list[int] = []
    original = trainer.data.load
    trainer.data.load = lambda shard, key="activations": (  # type: ignore[method-assign]
        loads.append(shard.index) or original(shard, key)
    )
    batches = list(trainer.iter_batches(0))
    assert len(batches) == trainer.steps_per_epoch == n // 128
    ids = torch.cat(batches)[:, 0].long()
    assert len(ids.unique()) == len(ids)  # no token twice in an epoch
    assert len(loads) == 6  # every shard read exactly once per epoch
    # The first batch mixes two shards (shuffle buffer of 2), never more.
    first_shards = (batches[0][:, 0] // 400).long().unique()
    assert len(first_shards) == 2
    # Seeded: the same epoch replays identically, another epoch differs.
    again = torch.cat(list(trainer.iter_batches(0)))[:, 0]
    assert torch.equal(torch.cat(batches)[:, 0], again)
    assert not torch.equal(torch.cat(list(trainer.iter_batches(1)))[:, 0], again)


def test_single_shard_capture_has_no_heldout(tmp_path: Path) -> None:
    x, _ = planted_features(1000, d=8, n_features=16, active=2)
    acts = write_synthetic_shards(tmp_path / "acts", x, shard_tokens=1000)
    trainer = Trainer(make_cfg(acts, tmp_path / "out", epochs=1))
    trainer.train()
    log = json.loads((trainer.out_dir / TRAIN_LOG).read_text())
    assert "1 shard" in log["heldout_note"]
    assert log["epochs"][0]["heldout_fvu"] is None
    assert log["train_tokens"] == 1000
    assert Sae.load_from_disk(trainer.out_dir).meta["training"]["heldout_fvu"] is None


def test_capture_smaller_than_a_batch_trains_on_all(tmp_path: Path) -> None:
    x, _ = planted_features(300, d=8, n_features=16, active=2)
    acts = write_synthetic_shards(tmp_path / "acts", x, shard_tokens=100)
    cfg = make_cfg(acts, tmp_path / "out", heldout_fraction=0.0, epochs=1, batch_size=4096)
    trainer = Trainer(cfg)
    assert trainer.batch_size == 300 and trainer.steps_per_epoch == 1
    trainer.train()
    assert trainer.step_count == 1


def test_non_finite_activations_are_rejected(tmp_path: Path) -> None:
    x, _ = planted_features(1000, d=8, n_features=16, active=2)
    x[10, 3] = float("inf")
    acts = write_synthetic_shards(tmp_path / "acts", x, shard_tokens=500)
    with pytest.raises(ValueError, match="NaN or inf"):
        Trainer(make_cfg(acts, tmp_path / "out", heldout_fraction=0.0)).train()


# -- checkpoints and resume ------------------------------------------------------------------


class Interrupted(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted(
    small_capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dict(epochs=3, dead_tokens=512)  # dead latents: the counters must resume too
    reference = Trainer(make_cfg(small_capture, tmp_path / "ref", **settings))
    reference.train()

    cfg = make_cfg(small_capture, tmp_path / "run", **settings)
    killed = Trainer(cfg)
    # "Kill" the run in the middle of the second epoch.
    stop_at = killed.steps_per_epoch + killed.steps_per_epoch // 2
    real_step = Trainer.step

    def step_then_die(self: Trainer, x: torch.Tensor):  # type: ignore[no-untyped-def]
        if self.step_count == stop_at:
            raise Interrupted
        return real_step(self, x)

    monkeypatch.setattr(Trainer, "step", step_then_die)
    with pytest.raises(Interrupted):
        killed.train()
    monkeypatch.setattr(Trainer, "step", real_step)

    # The first epoch's checkpoint is on disk and loadable.
    folder = tmp_path / "run" / HOOK
    assert Sae.load_from_disk(folder).meta["training"]["epochs_done"] == 1
    state = json.loads((folder / STATE_DIR / STATE_FILE).read_text())
    assert state["epochs_done"] == 1 and state["step"] == killed.steps_per_epoch
    assert sorted(p.name for p in (folder / STATE_DIR).iterdir()) == [
        "state-epoch0001.safetensors",
        STATE_FILE,
    ]

    resumed = Trainer(cfg)
    resumed.train()
    assert resumed.step_count == reference.step_count
    for name, tensor in reference.sae.state_for_disk().items():
        assert torch.equal(resumed.sae.state_for_disk()[name], tensor), name
    assert torch.equal(resumed.tokens_since_fired, reference.tokens_since_fired)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in reference.log]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.log] == strip
    final = Sae.load_from_disk(folder)
    assert torch.equal(final.W_dec, reference.sae.W_dec.detach())

    # A finished run started again does nothing and returns the same SAE.
    again = Trainer(cfg)
    assert torch.equal(again.train().W_dec, reference.sae.W_dec)
    assert again.step_count == reference.step_count


def test_resume_refuses_a_different_config(small_capture: Path, tmp_path: Path) -> None:
    train_sae(make_cfg(small_capture, tmp_path / "out", epochs=1))
    with pytest.raises(ConfigError, match="lr"):
        train_sae(make_cfg(small_capture, tmp_path / "out", epochs=1, lr=1e-3))
    # Without resume the run starts over.
    trainer = Trainer(make_cfg(small_capture, tmp_path / "out", epochs=1, lr=1e-3, resume=False))
    trainer.train()
    assert trainer.step_count == trainer.steps_per_epoch
    assert trainer.log[0]["epoch"] == 1 and len(trainer.log) == 1
    state_files = sorted(p.name for p in (trainer.out_dir / STATE_DIR).iterdir())
    assert state_files == ["state-epoch0001.safetensors", STATE_FILE]


# -- config and command line -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("k", 0),
        ("expansion_factor", 0),
        ("num_latents", -1),
        ("lr", 0.0),
        ("lr", float("inf")),
        ("batch_size", 0),
        ("epochs", 0),
        ("auxk_alpha", -0.1),
        ("dead_tokens", 0),
        ("grad_clip", -1.0),
        ("heldout_fraction", 1.0),
        ("heldout_fraction", -0.5),
        ("seed", -1),
        ("shuffle_shards", 0),
        ("device", "not-a-device"),
        ("activations", ""),
    ],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{"activations": "a", "out": "o", field: value})  # type: ignore[arg-type]
    assert err.value.field == field


def test_config_k_above_num_latents() -> None:
    with pytest.raises(ConfigError, match="num_latents"):
        TrainConfig(activations="a", out="o", num_latents=16, k=32)


def test_config_from_dict_coerces_and_rejects_unknown() -> None:
    cfg = TrainConfig.from_dict({"activations": "a", "out": "o", "lr": "1e-3", "k": "8"})
    assert cfg.lr == 1e-3 and cfg.k == 8
    assert cfg.auxk_alpha == 1 / 32 and cfg.dead_tokens == 10_000_000 and cfg.epochs == 5
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"activations": "a", "out": "o", "epoch": 3})


def test_missing_capture_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        Trainer(make_cfg(tmp_path / "nowhere", tmp_path / "out"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_a_config_error(small_capture: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Trainer(make_cfg(small_capture, tmp_path / "out", device="cuda"))


def test_train_parser_trains(small_capture: Path, tmp_path: Path) -> None:
    parser = build_parser("train")
    out = tmp_path / "cli-out"
    args = parser.parse_args([
        "train", "--activations", str(small_capture), "--out", str(out),
        "--k", "4", "--expansion-factor", "2", "--batch-size", "512", "--epochs", "1",
        "--lr", "1e-3", "--device", "cpu", "--no-resume",
    ])  # fmt: skip
    assert args.handler(args) == 0
    sae = Sae.load_from_disk(out / HOOK)
    assert sae.cfg.k == 4 and sae.num_latents == 32
    assert sae.meta["training"]["config"]["batch_size"] == 512

    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", str(out)])  # --activations is required


def test_saeuron_cli_main_train(
    small_capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [
        "train", "--activations", str(small_capture), "--out", str(tmp_path / "o"),
        "--k", "4", "--expansion-factor", "2", "--epochs", "1", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "o" / HOOK / "sae.safetensors").is_file()
    # Config errors become an exit code, not a traceback.
    assert main([*argv, "--k", "0"]) == 2


def test_shards_helper_roundtrip(tmp_path: Path) -> None:
    x = torch.randn(1000, 8)
    folder = write_synthetic_shards(tmp_path / "acts", x, shard_tokens=300)
    data = ActivationShards(folder)
    assert data.d_in == 8 and data.n_tokens == 1000 and len(data.shards) == 4
    assert data.manifest["hookpoint"] == HOOK
    back = torch.cat([data.load(s) for s in data.shards]).float()
    torch.testing.assert_close(back, x.half().float())


def test_train_names_a_corrupt_shard_in_one_line(
    small_capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = small_capture / "shard_00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF  # same size: only the SHA-256 can tell
    shard.write_bytes(bytes(data))
    argv = [
        "train", "--activations", str(small_capture), "--out", str(tmp_path / "o"),
        "--k", "4", "--expansion-factor", "2", "--epochs", "1", "--device", "cpu",
    ]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith(f"saeuron train: error: {shard}: SHA-256")
    assert "rerun `saeuron cache`" in errors[0]
    # Nothing trained on it: no SAE was written.
    assert not (tmp_path / "o" / HOOK / "sae.safetensors").exists()

    shard.write_bytes(bytes(data[:-1]))  # truncated: refused before training starts
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # refused before training: no progress bar either
    assert f"{shard}: {len(data) - 1} bytes, manifest.json records" in err[0]
