"""saeuron convert: published pickles into our formats, only with the user's trust."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from saeuron.cli.main import main
from saeuron.erasure.concepts.select import select_contrastive
from saeuron.erasure.concepts.stats import ConceptStats
from saeuron.erasure.convert import convert_params, convert_stats


def published_stats(path, steps=4, latents=32):
    # The layout SAeUron's gather script pickles: class -> [prompts, steps, latents] fp16.
    gen = torch.Generator().manual_seed(0)
    data = {name: torch.rand(5, steps, latents, generator=gen).half() for name in
            ("Dogs", "Cats", "Sea Turtles")}  # fmt: skip
    data["Dogs"][:, :, 7] += 3.0  # a latent of its own
    with path.open("wb") as fh:
        pickle.dump(data, fh)
    return data


def test_without_trust_nothing_is_read_and_nothing_written(tmp_path, capsys) -> None:
    src = tmp_path / "cls_latents_dict_x.pkl"
    src.write_bytes(b"not even a pickle")  # would fail to load: proves it is never opened
    code = main(["convert", "stats", str(src), "--out", str(tmp_path / "stats")])
    err = capsys.readouterr().err
    assert code == 2 and "trust_pickle" in err and "runs whatever code" in err
    assert not (tmp_path / "stats").exists()


def test_statistics_convert_to_concept_stats_that_select_features(tmp_path) -> None:
    src = tmp_path / "cls_latents_dict_unet.up_blocks.1.attentions.1.pkl"
    data = published_stats(src)
    hook = "unet.up_blocks.1.attentions.1"
    args = ["convert", "stats", str(src), "--out", str(tmp_path / "stats"), "--hookpoint", hook]
    assert main([*args, "--trust-pickle"]) == 0
    dogs = ConceptStats.load(tmp_path / "stats" / "Dogs")
    torch.testing.assert_close(dogs.mean, data["Dogs"].float().mean(0))
    assert dogs.n_prompts == 5 and dogs.num_steps == 4 and dogs.timesteps.tolist()[0] > 700
    assert (tmp_path / "stats" / "Sea_Turtles.json").is_file()
    cats = ConceptStats.load(tmp_path / "stats" / "Cats")
    turtles = ConceptStats.load(tmp_path / "stats" / "Sea_Turtles")
    features = select_contrastive(dogs, [cats, turtles], tau=1)
    assert features.latents() == {7}


def test_class_params_become_plain_json(tmp_path) -> None:
    src = tmp_path / "class_params.pth"
    torch.save({"Dogs": {"percentile": 99.999, "multiplier": torch.tensor(-5.0)},
                "Cats": {"percentile": 99.99, "multiplier": -1.0}}, src)  # fmt: skip
    with pytest.raises(Exception, match="trust_pickle"):
        convert_params(src, tmp_path / "p.json")
    out = convert_params(src, tmp_path / "p.json", trust_pickle=True)
    assert json.loads(out.read_text())["Dogs"] == {"percentile": 99.999, "multiplier": -5.0}
    with pytest.raises(Exception, match="expected a dict"):
        bad = tmp_path / "bad.pkl"
        bad.write_bytes(pickle.dumps([1, 2]))
        convert_stats(bad, tmp_path / "s", trust_pickle=True)
