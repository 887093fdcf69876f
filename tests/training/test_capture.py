"""``saeuron cache`` on the tiny pipelines: shard contents, resume, validation, multi-process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
from safetensors.torch import load_file

import saeuron.training.capture as capture
from saeuron.minicanvas.assets import write_bundle
from saeuron.models.pipelines import load_pipeline
from saeuron.models.tiny import build_tiny_sd
from saeuron.training.capture import CacheConfig, parse_steps, run_cache
from saeuron.training.shards import ActivationShards
from saeuron.utils.config import ConfigError
from saeuron.utils.errors import FileFormatError
from saeuron.utils.prompts import read_prompts
from saeuron.utils.storage import Folder

SD_HOOK = "unet.up_blocks.1.attentions.1"
SDXL_HOOK = "unet.up_blocks.0.attentions.1"
TOKENS = 8 * 8  # 8x8 latent grid at both hookpoints
D_IN = 32
PROMPTS = ["a cat", "a dog on a sofa", "a red car", "the sea at night", "a tall tree"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Two cores shared with other jobs: a second OpenMP thread makes these tiny models
    # up to 100x slower through oversubscription.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:2] + [""] + PROMPTS[2:]) + "\n", encoding="utf-8")
    return path


def make_cfg(prompt_path: Path, out_dir: Path | str, **changes: Any) -> CacheConfig:
    settings: dict[str, Any] = {
        "model": "tiny-sd",
        "hookpoint": SD_HOOK,
        "prompts": str(prompt_path),
        "out": str(out_dir),
        "num_inference_steps": 3,
        "batch_size": 2,
    }
    settings.update(changes)
    return CacheConfig(**settings)


def load_all(out: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((out / "manifest.json").read_text())
    parts = [
        load_file(str(out / f"shard_{s['index']:05d}.safetensors")) for s in manifest["shards"]
    ]
    return {k: torch.cat([p[k] for p in parts]) for k in ("activations", "step", "prompt")}



def crash_after_first_shard(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make the capture write its first shard, then die as a killed process would; returns
    the real shard writer, to put back for the resume."""
    real_write = capture._write_shard
    written: list[int] = []

    def crash_after_first(*args: Any, **kwargs: Any) -> None:
        if written:
            raise RuntimeError("simulated crash")
        real_write(*args, **kwargs)
        written.append(1)

    monkeypatch.setattr(capture, "_write_shard", crash_after_first)
    return real_write

def test_shapes_steps_and_manifest(prompt_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = run_cache(make_cfg(prompt_file, out, max_shard_mb=0.03))
    data = load_all(out)
    n = len(PROMPTS) * 3 * TOKENS
    assert data["activations"].shape == (n, D_IN)
    assert data["activations"].dtype == torch.float16
    assert data["step"].dtype == torch.int16 and data["prompt"].dtype == torch.int32
    assert sorted(data["step"].unique().tolist()) == [0, 1, 2]
    assert torch.bincount(data["prompt"]).tolist() == [3 * TOKENS] * len(PROMPTS)
    assert manifest["d_in"] == D_IN and manifest["n_tokens"] == n
    assert manifest["model"] == "tiny-sd" and manifest["hookpoint"] == SD_HOOK
    assert manifest["dtype"] == "float16"
    # Several shards, prompt ranges tiling [0, 5) in order.
    ranges = [tuple(s["prompts"]) for s in manifest["shards"]]
    assert len(ranges) > 1
    assert [r[0] for r in ranges] == [0] + [r[1] for r in ranges[:-1]] and ranges[-1][1] == 5
    for shard in manifest["shards"]:
        assert (out / f"shard_{shard['index']:05d}.safetensors").stat().st_size < 0.03 * 2**20
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_step_subset_stops_sampling_early(
    prompt_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unet_calls: list[int] = []
    real_load = capture.load_pipeline

    def counting_load(*args: Any, **kwargs: Any) -> Any:
        pipe = real_load(*args, **kwargs)
        pipe.unet.register_forward_pre_hook(lambda *_: unet_calls.append(1))
        return pipe

    monkeypatch.setattr(capture, "load_pipeline", counting_load)
    cfg = make_cfg(prompt_file, tmp_path / "out", num_inference_steps=4, steps="0-1", limit=2)
    run_cache(cfg)
    data = load_all(tmp_path / "out")
    assert sorted(data["step"].unique().tolist()) == [0, 1]
    assert data["activations"].shape[0] == 2 * 2 * TOKENS
    # One 1-step probe, then a single batch that stops after step 1 of 4.
    assert len(unet_calls) == 1 + 2


def test_gappy_steps_recorded(prompt_file: Path, tmp_path: Path) -> None:
    run_cache(make_cfg(prompt_file, tmp_path / "out", num_inference_steps=4, steps="0,2-3"))
    steps = load_all(tmp_path / "out")["step"]
    assert (
        torch.bincount(steps.long()).tolist()
        == [len(PROMPTS) * TOKENS, 0] + [len(PROMPTS) * TOKENS] * 2
    )


def test_conditional_half_matches_manual_hook(prompt_file: Path, tmp_path: Path) -> None:
    run_cache(make_cfg(prompt_file, tmp_path / "out", dtype="float32", limit=2))
    data = load_all(tmp_path / "out")

    pipe = build_tiny_sd()
    module = pipe.unet.get_submodule(SD_HOOK.removeprefix("unet."))
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(o[0].detach().clone()))
    pipe(
        PROMPTS[:2],
        num_inference_steps=3,
        guidance_scale=7.5,  # the model's default, which the capture takes
        generator=[torch.Generator().manual_seed(i) for i in range(2)],
        output_type="latent",
    )
    handle.remove()
    assert len(seen) == 3 and seen[0].shape[0] == 4  # [uncond x2; cond x2] per step
    # Shards order tokens by (prompt, step); rows 2 and 3 are the conditional half.
    expected = torch.cat(
        [seen[s][2 + j].permute(1, 2, 0).reshape(-1, D_IN) for j in range(2) for s in range(3)]
    )
    torch.testing.assert_close(data["activations"], expected, rtol=0, atol=0)
    steps = torch.arange(3, dtype=torch.int16).repeat_interleave(TOKENS)
    assert torch.equal(data["step"], steps.repeat(2))
    prompts = torch.tensor([0, 1], dtype=torch.int32).repeat_interleave(3 * TOKENS)
    assert torch.equal(data["prompt"], prompts)


def test_guidance_half_both_doubles_tokens(prompt_file: Path, tmp_path: Path) -> None:
    cond = run_cache(make_cfg(prompt_file, tmp_path / "cond", limit=2))
    both = run_cache(make_cfg(prompt_file, tmp_path / "both", limit=2, guidance_half="both"))
    assert both["n_tokens"] == 2 * cond["n_tokens"] == 2 * 2 * 3 * TOKENS
    assert torch.bincount(load_all(tmp_path / "both")["prompt"]).tolist() == [2 * 3 * TOKENS] * 2


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_storage_dtype(prompt_file: Path, tmp_path: Path, dtype: str) -> None:
    manifest = run_cache(make_cfg(prompt_file, tmp_path / "out", dtype=dtype, limit=1))
    assert manifest["dtype"] == dtype
    assert load_all(tmp_path / "out")["activations"].dtype == getattr(torch, dtype)


def test_update_site_differs_from_output(prompt_file: Path, tmp_path: Path) -> None:
    common = {"dtype": "float32", "limit": 1}
    run_cache(make_cfg(prompt_file, tmp_path / "a", **common))
    run_cache(make_cfg(prompt_file, tmp_path / "b", activation_site="update", **common))
    a, b = load_all(tmp_path / "a"), load_all(tmp_path / "b")
    assert a["activations"].shape == b["activations"].shape
    assert not torch.allclose(a["activations"], b["activations"])


def test_tokens_per_image_subsample(prompt_file: Path, tmp_path: Path) -> None:
    manifest = run_cache(make_cfg(prompt_file, tmp_path / "a", tokens_per_image=5, dtype="float32"))
    data = load_all(tmp_path / "a")
    assert manifest["n_tokens"] == data["activations"].shape[0] == len(PROMPTS) * 3 * 5
    assert torch.bincount(data["prompt"]).tolist() == [3 * 5] * len(PROMPTS)
    # The subsample is keyed by prompt and step, not by batch: other batching, same tokens.
    run_cache(
        make_cfg(prompt_file, tmp_path / "b", tokens_per_image=5, dtype="float32", batch_size=1)
    )
    other = load_all(tmp_path / "b")
    assert torch.equal(data["prompt"], other["prompt"])
    torch.testing.assert_close(data["activations"], other["activations"], rtol=1e-4, atol=1e-5)


def test_tokens_per_image_above_grid_rejected(prompt_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        run_cache(make_cfg(prompt_file, tmp_path / "out", tokens_per_image=TOKENS + 1))
    assert err.value.field == "tokens_per_image"


def test_resume_after_crash(
    prompt_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"max_shard_mb": 0.03, "dtype": "float32"}
    reference = run_cache(make_cfg(prompt_file, tmp_path / "ref", **settings))
    assert len(reference["shards"]) >= 2

    out = tmp_path / "out"
    real_write = crash_after_first_shard(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cache(make_cfg(prompt_file, out, **settings))
    first = out / "shard_00000.safetensors"
    assert (out / "shard_00000.json").is_file() and not (out / "shard_00001.json").exists()
    assert not (out / "manifest.json").exists()
    stamp, content = first.stat().st_mtime_ns, first.read_bytes()

    monkeypatch.setattr(capture, "_write_shard", real_write)
    resumed = run_cache(make_cfg(prompt_file, out, **settings, batch_size=3))
    assert first.stat().st_mtime_ns == stamp and first.read_bytes() == content
    assert resumed == reference
    ref, got = load_all(tmp_path / "ref"), load_all(out)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6)


def test_different_settings_into_same_folder(
    prompt_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    run_cache(make_cfg(prompt_file, out, limit=1))

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("settings must be checked before the model loads")

    monkeypatch.setattr(capture, "load_pipeline", no_load)
    with pytest.raises(ConfigError, match="num_inference_steps: 3 in the folder, 4 now"):
        run_cache(make_cfg(prompt_file, out, limit=1, num_inference_steps=4))
    with pytest.raises(ConfigError, match="n_prompts"):
        run_cache(make_cfg(prompt_file, out, limit=2))


def test_a_capture_written_before_the_guidance_rename_resumes_and_reads(
    prompt_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    reference = run_cache(make_cfg(prompt_file, out, limit=1, guidance_half="both"))
    for name in ("plan.json", "manifest.json"):
        path = out / name
        text = path.read_text()
        assert '"guidance_half"' in text
        path.write_text(text.replace('"guidance_half"', '"cfg_half"'))
    # Same settings under the old name: a resume, not a folder of other settings.
    assert run_cache(make_cfg(prompt_file, out, limit=1, guidance_half="both")) == reference
    (out / "manifest.json").write_text(
        (out / "manifest.json").read_text().replace('"guidance_half"', '"cfg_half"')
    )
    manifest = ActivationShards(out).manifest
    assert manifest["guidance_half"] == "both" and "cfg_half" not in manifest
    with pytest.raises(ConfigError, match="guidance_half: 'both' in the folder, 'cond' now"):
        run_cache(make_cfg(prompt_file, out, limit=1))


def test_foreign_shards_rejected(prompt_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard_00000.json").write_text("{}")
    with pytest.raises(ConfigError, match="no plan.json"):
        run_cache(make_cfg(prompt_file, out))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", "0,5", "outside 0-2"),
        ("steps", "2-1", "backwards"),
        ("steps", "a", "'all' or a comma list"),
        ("steps", ",", "'all' or a comma list"),
        ("guidance_half", "uncond", "'cond', 'both'"),
        ("dtype", "int8", "'float16', 'bfloat16', 'float32'"),
        ("activation_site", "input", "'output', 'update'"),
        ("tokens_per_image", -1, ">= 0"),
        ("max_shard_mb", 0.0, "> 0"),
        ("batch_size", 0, ">= 1"),
        ("num_inference_steps", 0, ">= 1"),
        ("guidance_scale", -1.0, ">= 0"),
        ("seed", -1, ">= 0"),
        ("height", 30, "multiple of 8"),
        ("limit", 0, ">= 1"),
        ("device", "gpu0", "expected e.g."),
        ("model", "", "must not be empty"),
        ("prompts", "missing.txt", "does not exist"),
        ("prompts", "prompts.json", ".txt or .csv"),
    ],
)
def test_validation(
    prompt_file: Path, tmp_path: Path, field: str, value: Any, message: str
) -> None:
    if field == "prompts":
        value = str(tmp_path / value)
    with pytest.raises(ConfigError) as err:
        make_cfg(prompt_file, tmp_path / "out", **{field: value})
    assert err.value.field == field
    assert message in str(err.value)


def test_from_cli_strings(prompt_file: Path, tmp_path: Path) -> None:
    cfg = CacheConfig.from_dict(
        {
            "model": "tiny-sd",
            "hookpoint": SD_HOOK,
            "prompts": str(prompt_file),
            "out": str(tmp_path),
            "num_inference_steps": "10",
            "steps": "0,3-5,9",
            "height": "64",
            "device": "cpu",
        }
    )
    assert cfg.num_inference_steps == 10 and cfg.height == 64
    assert cfg.step_indices() == [0, 3, 4, 5, 9]
    assert parse_steps("all", 3) == [0, 1, 2]


def test_csv_prompts(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('case,prompt\n1,"a cat, sleeping"\n2,a dog\n', encoding="utf-8")
    assert read_prompts(path, keep_empty=True) == ["a cat, sleeping", "a dog"]
    bad = tmp_path / "bad.csv"
    bad.write_text("case,text\n1,a cat\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no 'prompt' column"):
        make_cfg(bad, tmp_path / "out")


def test_sdxl_without_guidance_records_whole_batch(prompt_file: Path, tmp_path: Path) -> None:
    manifest = run_cache(
        make_cfg(
            prompt_file,
            tmp_path / "out",
            model="tiny-sdxl",
            hookpoint=SDXL_HOOK,
            guidance_scale=0.0,
            limit=3,
        )
    )
    data = load_all(tmp_path / "out")
    assert manifest["d_in"] == D_IN and manifest["rows_per_prompt"] == 1
    assert data["activations"].shape == (3 * 3 * TOKENS, D_IN)
    assert torch.bincount(data["prompt"]).tolist() == [3 * TOKENS] * 3


def test_unknown_hookpoint(prompt_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        run_cache(make_cfg(prompt_file, tmp_path / "out", hookpoint="unet.up_blocks.9"))
    assert err.value.field == "hookpoint"


def test_bundled_model_missing_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bundle described by its bundle.json whose pipeline is not built.
    (tmp_path / "absent").mkdir()
    write_bundle(tmp_path / "absent")
    monkeypatch.setenv("SAEURON_BUNDLES", str(tmp_path))
    with pytest.raises(ConfigError, match="'absent' is not built") as err:
        load_pipeline("absent", "cpu")
    assert err.value.field == "model"


def test_load_pipeline_from_folder(tmp_path: Path) -> None:
    from saeuron.models.pipelines import load_pipeline

    build_tiny_sd().save_pretrained(tmp_path / "sd")
    pipe = load_pipeline(str(tmp_path / "sd"), "cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None and pipe.device.type == "cpu"
    assert pipe.unet.get_submodule(SD_HOOK.removeprefix("unet.")) is not None


@pytest.mark.slow
def test_accelerate_launch_two_processes(prompt_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    # `--cpu` starts a single process in accelerate >= 1.x (several only through mpirun);
    # `--multi_gpu` with no visible GPU starts torchrun workers that form a gloo CPU group.
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "saeuron", "-v", "cache",
        "--model", "tiny-sd", "--hookpoint", SD_HOOK, "--prompts", str(prompt_file),
        "--out", str(out), "--num-inference-steps", "2", "--max-shard-mb", "0.015",
        "--batch-size", "2",
    ]  # fmt: skip
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert "process 0/2 wrote shard" in log and "process 1/2 wrote shard" in log

    manifest = json.loads((out / "manifest.json").read_text())
    covered = [i for s in manifest["shards"] for i in range(*s["prompts"])]
    assert covered == list(range(len(PROMPTS)))
    assert len(manifest["shards"]) >= 2
    data = load_all(out)
    assert torch.bincount(data["prompt"]).tolist() == [2 * TOKENS] * len(PROMPTS)


# -- checksums: a finished shard that no longer matches its sidecar is captured again ----------


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_finished_shards_are_captured_again(
    prompt_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"max_shard_mb": 0.03, "dtype": "float32"}
    out = tmp_path / "out"
    reference = run_cache(make_cfg(prompt_file, out, **settings))
    assert len(reference["shards"]) >= 3
    for entry in reference["shards"]:
        assert len(entry["sha256"]) == 64 and entry["bytes"] > 0
    originals = {p.name: p.read_bytes() for p in out.glob("shard_*.safetensors")}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.safetensors")}

    _flip_byte(out / "shard_00001.safetensors")  # same size: only the checksum tells
    truncated = out / "shard_00002.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-64])
    with caplog.at_level(logging.WARNING, logger="saeuron"):
        resumed = run_cache(make_cfg(prompt_file, out, **settings))
    assert "shard_00001.safetensors does not match its sidecar (SHA-256" in caplog.text
    assert "shard_00002.safetensors does not match its sidecar" in caplog.text
    assert resumed == reference
    for name, data in originals.items():
        path = out / name
        assert path.read_bytes() == data, name
        rewritten = path.stat().st_mtime_ns != stamps[name]
        assert rewritten == (name in ("shard_00001.safetensors", "shard_00002.safetensors"))


def test_a_corrupt_shard_is_never_counted_done(
    prompt_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"max_shard_mb": 0.03, "dtype": "float32"}
    out = tmp_path / "out"
    reference = run_cache(make_cfg(prompt_file, out, **settings))
    _flip_byte(out / "shard_00000.safetensors")

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated crash")

    # The resume dies before it has captured the bad shard again: the capture is not
    # complete (no manifest), and the bad shard is not done (no sidecar).
    monkeypatch.setattr(capture, "_write_shard", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cache(make_cfg(prompt_file, out, **settings))
    assert not (out / "manifest.json").exists()
    assert not (out / "shard_00000.json").exists() and (out / "shard_00001.json").exists()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        ActivationShards(out)

    monkeypatch.undo()
    assert run_cache(make_cfg(prompt_file, out, **settings)) == reference


def test_sidecars_without_checksums_get_them(prompt_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    reference = run_cache(make_cfg(prompt_file, out, max_shard_mb=0.03, limit=3))
    for sidecar in out.glob("shard_*.json"):
        meta = json.loads(sidecar.read_text())
        del meta["sha256"], meta["bytes"]
        sidecar.write_text(json.dumps(meta))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.safetensors")}
    assert run_cache(make_cfg(prompt_file, out, max_shard_mb=0.03, limit=3)) == reference
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.safetensors")}


# -- remote storage (fsspec's memory:// filesystem) ---------------------------------------------


@pytest.fixture
def memory_url() -> Iterator[str]:
    root = f"saeuron-test-{uuid.uuid4().hex}"
    yield f"memory://{root}/acts"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


def test_capture_to_a_url_resumes_and_verifies_like_a_local_one(
    prompt_file: Path, tmp_path: Path, memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"max_shard_mb": 0.03, "dtype": "float32"}
    local = run_cache(make_cfg(prompt_file, tmp_path / "local", **settings))

    real_write = crash_after_first_shard(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cache(make_cfg(prompt_file, memory_url, **settings))
    folder = Folder(memory_url)
    assert folder.is_file("shard_00000.json") and not folder.is_file("manifest.json")
    monkeypatch.setattr(capture, "_write_shard", real_write)
    remote = run_cache(make_cfg(prompt_file, memory_url, **settings))
    # Same shards, byte for byte (same checksums), as the local capture.
    assert remote == local
    assert folder.read_json("manifest.json") == local

    # A shard corrupted in the store is captured again on the next run.
    data = bytearray(folder.read_bytes("shard_00001.safetensors"))
    data[-5] ^= 0x10
    folder.write_bytes("shard_00001.safetensors", data)
    with pytest.raises(FileFormatError, match="shard_00001.safetensors"):
        shards = ActivationShards(memory_url)
        shards.load(shards.shards[1])
    assert run_cache(make_cfg(prompt_file, memory_url, **settings)) == local
    shards = ActivationShards(memory_url)
    assert all(shards.read(s) for s in shards.shards)


def test_unknown_storage_protocol_is_refused_before_loading(
    prompt_file: Path, forbid_model_loading: None
) -> None:
    with pytest.raises(ConfigError) as err:
        make_cfg(prompt_file, "nosuchfs://bucket/acts")  # type: ignore[arg-type]
    assert err.value.field == "out" and "nosuchfs" in str(err.value)
