"""SAE training over several processes: each reads its share, the SAE is the one-process SAE.

The default tier runs the processes as threads (tests/helpers/ranks.py: the trainer's own
multi-process code and collectives, without a launcher); the slow tier launches real gloo
processes with ``accelerate launch``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.ranks import ThreadProcesses, run_ranks, thread_ranks
from helpers.shards import planted_features, write_synthetic_shards

from saeuron.sae import Sae
from saeuron.training.distributed import Processes
from saeuron.training.trainer import STATE_DIR, STATE_FILE, TrainConfig, Trainer
from saeuron.utils.config import ConfigError

HOOK = "unet.up_blocks.1.attentions.1"
# Two processes against one at equal global batch, after 3 epochs of 9 steps on planted data
# (measured: 2e-7 on W_dec; float summation order is the only difference).
WEIGHT_TOL = 1e-4
FVU_REL_TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_cfg(activations: Path | str, out: Path, **overrides: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        activations=str(activations), out=str(out), k=4, expansion_factor=4, lr=5e-3,
        batch_size=256, epochs=3, heldout_fraction=0.2, device="cpu", dead_tokens=512,
    )  # fmt: skip
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, _ = planted_features(3000, d=16, n_features=32, active=2, seed=1)
    # Uneven shards (last one short), so shares and remainders differ between processes.
    return write_synthetic_shards(tmp_path_factory.mktemp("acts") / "acts", x, shard_tokens=280)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = torch.zeros(3000, 4)
    # A token id (exact in fp16) in the first two channels, to trace where tokens go.
    x[:, 0], x[:, 1] = torch.arange(3000) % 2048, torch.arange(3000) // 2048
    return write_synthetic_shards(tmp_path_factory.mktemp("ids") / "acts", x, shard_tokens=280)


def token_ids(rows: torch.Tensor) -> torch.Tensor:
    return rows[:, 0].long() + 2048 * rows[:, 1].long()


def train_ranks(cfg: TrainConfig, world: int) -> list[Trainer]:
    ranks = thread_ranks(world)
    # Built one after another: the initialisation forks the global RNG.
    trainers = [Trainer(cfg, processes=r) for r in ranks]
    run_ranks(ranks, lambda r: trainers[r.rank].train())
    return trainers


def assert_same_sae(a: Sae, b: Sae, tol: float = WEIGHT_TOL) -> None:
    worst = max(
        float((b.state_for_disk()[n] - t).abs().max()) for n, t in a.state_for_disk().items()
    )
    print(f"largest weight difference: {worst:.3g}")
    for name, tensor in a.state_for_disk().items():
        torch.testing.assert_close(b.state_for_disk()[name], tensor, rtol=0, atol=tol, msg=name)


@pytest.mark.parametrize(("world", "shuffle"), [(2, 2), (2, 1), (3, 2), (3, 4)])
def test_shares_make_up_the_one_process_batches(
    traced: Path, tmp_path: Path, world: int, shuffle: int
) -> None:
    cfg = make_cfg(traced, tmp_path, shuffle_shards=shuffle, heldout_fraction=0.0)
    single = Trainer(cfg)
    ranks = thread_ranks(world)
    trainers = [Trainer(cfg, processes=r) for r in ranks]
    loads: list[list[int]] = [[] for _ in ranks]
    for rank, trainer in zip(ranks, trainers):
        original = trainer.data.load

        def spy(shard: Any, key: str = "activations", r: int = rank.rank, f: Any = original):
            loads[r].append(shard.index)
            return f(shard, key)

        trainer.data.load = spy  # type: ignore[method-assign]
    n_train = len(single.train_shards)
    for epoch in (0, 1):
        for x in loads:
            x.clear()
        expected = list(single.iter_batches(epoch))
        shares = [list(t.iter_batches(epoch)) for t in trainers]
        assert all(len(s) == len(expected) == single.steps_per_epoch for s in shares)
        for step, batch in enumerate(expected):
            parts = [s[step] for s in shares]
            assert sum(p.shape[0] for p in parts) == batch.shape[0]
            # The same tokens (rows of distinct token ids), split over the processes.
            rows = torch.cat(parts)
            assert torch.equal(rows[token_ids(rows).argsort()], batch[token_ids(batch).argsort()])
        # Each process read only its shards: together every shard once, evenly shared.
        assert sorted(i for x in loads for i in x) == list(range(n_train))
        assert max(len(x) for x in loads) - min(len(x) for x in loads) <= 1


def test_two_processes_train_the_one_process_sae(capture: Path, tmp_path: Path) -> None:
    one = Trainer(make_cfg(capture, tmp_path / "one"))
    one.train()
    two = train_ranks(make_cfg(capture, tmp_path / "two"), 2)

    # The replicas never diverge: every process took the same steps.
    assert_same_sae(two[0].sae, two[1].sae, tol=0)
    assert torch.equal(two[0].tokens_since_fired, two[1].tokens_since_fired)
    assert_same_sae(one.sae, two[0].sae)
    assert two[0].step_count == one.step_count and two[0].tokens_seen == one.tokens_seen
    assert torch.equal(two[0].tokens_since_fired, one.tokens_since_fired)
    for a, b in zip(one.log, two[0].log):
        assert b["heldout_fvu"] == pytest.approx(a["heldout_fvu"], rel=FVU_REL_TOL)
        assert b["train_fvu"] == pytest.approx(a["train_fvu"], rel=FVU_REL_TOL)
        assert b["dead_latents"] == a["dead_latents"] and b["processes"] == 2
    assert two[0].first_batch_fvu == pytest.approx(one.first_batch_fvu, rel=1e-5)

    # Only the main process wrote; what it wrote is the trained SAE.
    folder = tmp_path / "two" / HOOK
    saved = Sae.load_from_disk(folder)
    assert_same_sae(two[0].sae, saved, tol=0)
    log = json.loads((folder / "train_log.json").read_text())
    assert [r["processes"] for r in log["epochs"]] == [2, 2, 2]


def test_per_token_topk_over_processes(capture: Path, tmp_path: Path) -> None:
    cfg = dict(topk="token", epochs=1)
    one = Trainer(make_cfg(capture, tmp_path / "one", **cfg))
    one.train()
    three = train_ranks(make_cfg(capture, tmp_path / "three", **cfg), 3)
    assert_same_sae(one.sae, three[0].sae)


class Interrupted(Exception):
    pass


def test_resume_under_another_process_count(
    capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = Trainer(make_cfg(capture, tmp_path / "ref"))
    reference.train()

    # One process dies in its second epoch ...
    cfg = make_cfg(capture, tmp_path / "run")
    killed = Trainer(cfg)
    stop_at = killed.steps_per_epoch + 2
    real_step = Trainer.step

    def step_then_die(self: Trainer, x: torch.Tensor) -> Any:
        if self.step_count == stop_at:
            raise Interrupted
        return real_step(self, x)

    monkeypatch.setattr(Trainer, "step", step_then_die)
    with pytest.raises(Interrupted):
        killed.train()
    monkeypatch.setattr(Trainer, "step", real_step)
    state = json.loads((tmp_path / "run" / HOOK / STATE_DIR / STATE_FILE).read_text())
    assert state["epochs_done"] == 1

    # ... and two processes finish the run from its checkpoint.
    resumed = train_ranks(cfg, 2)
    assert resumed[0].step_count == reference.step_count
    assert_same_sae(reference.sae, resumed[0].sae)
    assert_same_sae(reference.sae, Sae.load_from_disk(tmp_path / "run" / HOOK))


def test_a_failing_process_stops_the_others(capture: Path, tmp_path: Path) -> None:
    ranks = thread_ranks(2)
    trainers = [Trainer(make_cfg(capture, tmp_path), processes=r) for r in ranks]

    def broken(shard: Any, key: str = "activations") -> torch.Tensor:
        raise RuntimeError("disk gone")

    trainers[1].data.load = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="disk gone"):
        run_ranks(ranks, lambda r: trainers[r.rank].train())


def test_input_unit_norm_is_one_process_only(capture: Path, tmp_path: Path) -> None:
    ranks = thread_ranks(2)
    with pytest.raises(ConfigError) as err:
        Trainer(make_cfg(capture, tmp_path, input_unit_norm=True), processes=ranks[0])
    assert err.value.field == "input_unit_norm"
    # One process is fine.
    Trainer(make_cfg(capture, tmp_path, input_unit_norm=True), processes=Processes(
        torch.device("cpu")))


def test_collectives_per_step_are_few(capture: Path, tmp_path: Path) -> None:
    ranks = thread_ranks(2)
    trainers = [Trainer(make_cfg(capture, tmp_path, epochs=1, heldout_fraction=0.0),
                        processes=r) for r in ranks]  # fmt: skip
    run_ranks(ranks, lambda r: trainers[r.rank].train())
    per_step = ranks[0].group.collectives / trainers[0].step_count
    # Variance, threshold (info + counts + offers), gradients, firing counters: 6 a step.
    assert per_step < 8, per_step
    assert isinstance(ranks[0], ThreadProcesses)


# -- real processes (gloo) under accelerate launch ----------------------------------------------


def _launch(args: list[str], cwd: Path, processes: int = 2) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "-m", "saeuron", "-v", "train", *args,
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), children first."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (task / "children").read_text().split()
            found.extend(int(c) for c in children)
            todo.extend(int(c) for c in children)
    return found


def _train_args(acts: Path | str, out: Path, epochs: int = 3) -> list[str]:
    return [
        "--activations", str(acts), "--out", str(out), "--k", "4", "--expansion-factor", "4",
        "--lr", "5e-3", "--batch-size", "256", "--epochs", str(epochs), "--dead-tokens", "512",
        "--heldout-fraction", "0.2", "--device", "cpu",
    ]  # fmt: skip


@pytest.mark.slow
def test_accelerate_two_gloo_processes_match_one(capture: Path, tmp_path: Path) -> None:
    one = Trainer(make_cfg(capture, tmp_path / "one"))
    one.train()
    proc = _launch(_train_args(capture, tmp_path / "two"), tmp_path)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    assert "x 2 processes" in output
    two = Sae.load_from_disk(tmp_path / "two" / HOOK)
    assert_same_sae(one.sae, two)
    log = json.loads((tmp_path / "two" / HOOK / "train_log.json").read_text())
    for a, b in zip(one.log, log["epochs"]):
        assert b["heldout_fvu"] == pytest.approx(a["heldout_fvu"], rel=FVU_REL_TOL)
        assert b["processes"] == 2


@pytest.mark.slow
def test_accelerate_kill_and_resume(tmp_path: Path) -> None:
    # Long enough epochs to kill the run between its first and its last checkpoint.
    x, _ = planted_features(40_000, d=32, n_features=64, active=3, seed=2)
    acts = write_synthetic_shards(tmp_path / "acts", x, shard_tokens=5000)
    args = _train_args(acts, tmp_path / "ref", epochs=4)
    ref = _launch(args, tmp_path)
    output, _ = ref.communicate(timeout=900)
    assert ref.returncode == 0, output[-4000:]

    out = tmp_path / "run"
    state = out / HOOK / STATE_DIR / STATE_FILE
    proc = _launch(_train_args(acts, out, epochs=4), tmp_path)
    deadline = time.monotonic() + 600
    while not state.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert state.is_file() and proc.poll() is None, "the run ended before its first checkpoint"
    # torchrun's workers leave the launcher's process group: kill -9 the whole tree at once.
    for pid in [proc.pid, *descendants(proc.pid)]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["epochs_done"]
    assert 1 <= done < 4

    again = _launch(_train_args(acts, out, epochs=4), tmp_path)
    output, _ = again.communicate(timeout=900)
    assert again.returncode == 0, output[-4000:]
    assert f"resuming after epoch {done}/4" in output
    assert_same_sae(Sae.load_from_disk(tmp_path / "ref" / HOOK), Sae.load_from_disk(out / HOOK),
                    tol=0)
