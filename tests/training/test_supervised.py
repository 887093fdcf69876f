"""SAEmnesia's supervised fine-tune on data where the concepts are known directions."""

from __future__ import annotations

import torch

from saeuron.erasure.concepts.stats import ConceptStats
from saeuron.sae import Sae, SaeConfig
from saeuron.training.supervised import SupervisedSettings, assign_latents, finetune


def stats(name: str, mean: torch.Tensor) -> ConceptStats:
    return ConceptStats(concept=name, mean=mean[None], active_frac=torch.full_like(mean[None], .5),
                        n_prompts=4, timesteps=torch.zeros(1))  # fmt: skip


def test_assignment_is_greedy_and_distinct() -> None:
    base = torch.ones(16)
    a, b, c = base.clone(), base.clone(), base.clone()
    a[3], b[3], c[9] = 9.0, 8.0, 5.0  # a and b both want latent 3; a wants it more
    b[5] = 6.0
    got = assign_latents({"a": stats("a", a), "b": stats("b", b), "c": stats("c", c)})
    assert got["a"] == 3 and got["c"] == 9 and got["b"] == 5
    assert len(set(got.values())) == 3


def synthetic(n_images: int = 240, tokens: int = 8, d: int = 16, seed: int = 0):
    """Images whose tokens carry an object direction and a style direction, with labels."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(d, d, generator=gen))[0][:4] * 3.0
    obj = torch.randint(2, (n_images,), generator=gen)
    sty = torch.randint(2, (n_images,), generator=gen)
    acts = torch.randn(n_images, tokens, d, generator=gen) * 0.5
    acts += directions[obj][:, None, :] + directions[2 + sty][:, None, :]
    labels = torch.stack([obj == 0, obj == 1, sty == 0, sty == 1], dim=1).float()
    return acts, labels


def separation(sae: Sae, acts, labels, latents) -> float:
    """Mean gap between token-mean activations of labelled and unlabelled images."""
    with torch.no_grad():
        pre = sae.pre_acts(sae.standardise(acts.reshape(-1, acts.shape[-1]))[0])
    means = pre[:, latents].reshape(acts.shape[0], acts.shape[1], -1).mean(1)
    gaps = [(means[labels[:, j] == 1, j].mean() - means[labels[:, j] == 0, j].mean())
            for j in range(labels.shape[1])]  # fmt: skip
    return float(torch.stack(gaps).min())


def test_finetune_makes_each_assigned_latent_track_its_label() -> None:
    torch.manual_seed(0)
    acts, labels = synthetic()
    sae = Sae(SaeConfig(d_in=16, expansion_factor=4, k=4))
    concepts = ["o0", "o1", "s0", "s1"]
    # Deliberately arbitrary latents: the fine-tune has to make them mean their concepts.
    assignment = {"o0": 10, "o1": 20, "s0": 30, "s1": 40}
    kinds = {"o0": "object", "o1": "object", "s0": "style", "s1": "style"}
    latents = torch.tensor(list(assignment.values()))
    before = separation(sae, acts, labels, latents)
    weights = sae.W_dec.detach().clone()
    tuned, run = finetune(sae, acts, labels, concepts, assignment, kinds,
                          SupervisedSettings(lr=1e-2, batch_images=32, max_epochs=30))  # fmt: skip
    after = separation(tuned, acts, labels, latents)
    assert after > before + 0.5 and after > 0.5
    assert torch.equal(sae.W_dec, weights)  # the original SAE is left as it was
    first, last = run.history[0], min(run.history, key=lambda r: r["total"])
    assert last["bce"] < first["bce"]
    assert tuned.meta["supervised"]["assignment"] == assignment


# -- from a capture folder, through the command line ---------------------------------------

HOOK = "unet.up_blocks.1.attentions.1"


def write_labelled_capture(folder, n_prompts: int = 80, steps: int = 2, tokens: int = 8):
    """A capture whose prompts show one of two objects and one of two styles, and its CSV."""
    import hashlib

    from saeuron.training.shards import shard_name, write_manifest
    from saeuron.utils.io import atomic_write_json, atomic_write_safetensors

    acts, labels = synthetic(n_images=n_prompts * steps, tokens=tokens)
    # Image i is prompt i // steps at step i % steps; a prompt's steps share its labels.
    labels = labels.reshape(n_prompts, steps, -1)[:, 0]
    acts = acts.reshape(n_prompts, steps, tokens, -1)
    names = [["o0", "o1"][int(r[1])] + "," + ["s0", "s1"][int(r[3])] for r in labels]
    prompts = [f"prompt {i}: {n}" for i, n in enumerate(names)]
    per_shard = 20
    for index, start in enumerate(range(0, n_prompts, per_shard)):
        chunk = acts[start : start + per_shard]
        p = torch.arange(start, start + len(chunk))[:, None, None].expand(-1, steps, tokens)
        s = torch.arange(steps)[None, :, None].expand(len(chunk), -1, tokens)
        atomic_write_safetensors(folder / f"{shard_name(index)}.safetensors", {
            "activations": chunk.reshape(-1, chunk.shape[-1]).half(),
            "prompt": p.reshape(-1).int(), "step": s.reshape(-1).short(),
        })  # fmt: skip
        atomic_write_json(folder / f"{shard_name(index)}.json", {
            "index": index, "n_tokens": chunk[..., 0].numel(),
            "prompts": [start, start + len(chunk)],
        })  # fmt: skip
    write_manifest(folder, {
        "hookpoint": HOOK, "model": "synthetic", "d_in": acts.shape[-1], "guidance_half": "cond",
        "guidance_scale": 7.5, "num_inference_steps": steps, "n_prompts": n_prompts,
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "activation_site": "output",
    })  # fmt: skip
    csv_path = folder.parent / "labels.csv"
    csv_path.write_text(
        "prompt,object,style\n" + "".join(f'"{p}",{n}\n' for p, n in zip(prompts, names)),
        encoding="utf-8",
    )
    return csv_path


def test_read_labels_checks_rows_prompts_and_kinds(tmp_path) -> None:
    import pytest

    from saeuron.training.supervised import read_labels
    from saeuron.utils.config import ConfigError

    good = tmp_path / "good.csv"
    good.write_text("prompt,object,style\na,cat,\nb,dog,ink;oil\n", encoding="utf-8")
    concepts, kinds, labels = read_labels(good)
    assert concepts == ["cat", "dog", "ink", "oil"]
    assert kinds == {"cat": "object", "dog": "object", "ink": "style", "oil": "style"}
    assert labels.tolist() == [[1, 0, 0, 0], [0, 1, 1, 1]]
    with pytest.raises(ConfigError, match="labels.*3 prompts"):
        read_labels(good, n_prompts=3)
    with pytest.raises(ConfigError, match="not the captured prompt list"):
        read_labels(good, prompts_sha256="0" * 64)
    both = tmp_path / "both.csv"
    both.write_text("object,style\ncat,cat\ndog,ink\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="both 'object' and 'style'"):
        read_labels(both)


def test_train_supervised_cli_writes_one_latent_per_concept(tmp_path) -> None:
    from saeuron.cli.main import main
    from saeuron.erasure.features import ConceptFeatures
    from saeuron.training.supervised import load_image_groups

    acts_dir = tmp_path / "acts"
    acts_dir.mkdir()
    labels = write_labelled_capture(acts_dir)
    out = tmp_path / "sae"
    common = ["train", "--activations", str(acts_dir), "--out", str(out)]
    # Checked before anything trains: a labels file for another capture is refused.
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("object,style\no0,s0\n", encoding="utf-8")
    assert main([*common, "--supervised", "--labels", str(wrong)]) == 2
    assert not out.exists()
    assert main([*common, "--labels", str(labels)]) == 2  # --labels without --supervised

    code = main([*common, "--supervised", "--labels", str(labels), "--k", "4",
                 "--expansion-factor", "4", "--epochs", "3", "--batch-size", "128",
                 "--supervised-lr", "1e-2", "--batch-images", "32", "--max-epochs", "40",
                 "--patience", "6",
                 "--device", "cpu"])  # fmt: skip
    assert code == 0
    folder = out / HOOK
    tuned = Sae.load_from_disk(folder)
    base = Sae.load_from_disk(out / "unsupervised" / HOOK)
    assignment = tuned.meta["supervised"]["assignment"]
    assert sorted(assignment) == ["o0", "o1", "s0", "s1"]
    assert len(set(assignment.values())) == 4
    groups = load_image_groups(acts_dir, labels)
    assert groups.acts.shape == (160, 8, 16)
    latents = torch.tensor([assignment[c] for c in groups.concepts])
    before = separation(base, groups.acts, groups.labels, latents)
    assert separation(tuned, groups.acts, groups.labels, latents) > max(2 * before, 0.4)
    for concept, latent in assignment.items():
        feats = ConceptFeatures.load(folder / "features" / concept)
        assert feats.indices.flatten().tolist() == [latent] * 2  # its latent, at both steps
        assert feats.hookpoint == HOOK and bool((feats.mean > feats.threshold).all())
