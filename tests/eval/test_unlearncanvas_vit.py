"""UnlearnCanvas's published classifiers load as published and judge as its scripts do.

The fixtures are small ViTs with timm's exact key names and order, saved as the published
``style50.pth`` / ``style50_cls.pth`` are (a dict holding ``model_state_dict``, written from
the GPU); logits are checked against a ViT forward written out here from the raw tensors.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from saeuron.eval import parse_eval_config, run_eval
from saeuron.eval.judges import make_judge
from saeuron.eval.metrics import METRICS, Item
from saeuron.eval.runner import plan
from saeuron.eval.unlearncanvas_vit import (
    OBJECTS,
    PUBLISHED_SEEDS,
    STYLES,
    load_classifier,
    preprocess,
)
from saeuron.utils.config import ConfigError

DIM, DEPTH, HIDDEN, PATCH = 128, 2, 256, 16  # ViT-L/16 is 1024, 24, 4096, 16


def timm_state(num_classes: int, seed: int) -> OrderedDict:
    """A ``vit_large_patch16_224`` state dict at small width: timm's keys, in timm's order."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    sd = OrderedDict()
    sd["cls_token"] = rand(1, 1, DIM, scale=0.5)
    sd["pos_embed"] = rand(1, 197, DIM, scale=0.5)
    sd["patch_embed.proj.weight"] = rand(DIM, 3, PATCH, PATCH)
    sd["patch_embed.proj.bias"] = rand(DIM)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd[b + "norm1.weight"] = 1 + rand(DIM)
        sd[b + "norm1.bias"] = rand(DIM)
        sd[b + "attn.qkv.weight"] = rand(3 * DIM, DIM, scale=0.2)
        sd[b + "attn.qkv.bias"] = rand(3 * DIM)
        sd[b + "attn.proj.weight"] = rand(DIM, DIM, scale=0.1)
        sd[b + "attn.proj.bias"] = rand(DIM)
        sd[b + "norm2.weight"] = 1 + rand(DIM)
        sd[b + "norm2.bias"] = rand(DIM)
        sd[b + "mlp.fc1.weight"] = rand(HIDDEN, DIM, scale=0.1)
        sd[b + "mlp.fc1.bias"] = rand(HIDDEN)
        sd[b + "mlp.fc2.weight"] = rand(DIM, HIDDEN, scale=0.1)
        sd[b + "mlp.fc2.bias"] = rand(DIM)
    sd["norm.weight"] = 1 + rand(DIM)
    sd["norm.bias"] = rand(DIM)
    sd["head.weight"] = rand(num_classes, DIM, scale=0.5)
    sd["head.bias"] = rand(num_classes)
    return sd


def save_published(path: Path, state: OrderedDict, monkeypatch, **extra) -> Path:
    """``torch.save({"epoch", "model_state_dict", "optimizer_state_dict", ...})`` on a GPU."""
    optimizer = {
        "state": {0: {"step": torch.tensor(100.0), "exp_avg": torch.zeros(3)}},
        "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                          "amsgrad": False, "foreach": None, "params": [0]}],
    }  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(
            {"epoch": 9, "model_state_dict": state, "optimizer_state_dict": optimizer, **extra},
            path,
        )
    return path


def reference_logits(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The ViT forward written out: pre-norm blocks, erf GELU, LayerNorm eps 1e-6."""
    heads = DIM // 64
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(len(x), 1, DIM), t], 1) + sd["pos_embed"]

    def ln(v, name):
        mu = v.mean(-1, keepdim=True)
        var = v.var(-1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + 1e-6) * sd[name + ".weight"] + sd[name + ".bias"]

    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = ln(t, b + "norm1")
        q, k, v = (h @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]).split(DIM, -1)
        split = lambda z: z.reshape(len(x), -1, heads, 64).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64), -1)
        out = (att @ v).transpose(1, 2).reshape(len(x), -1, DIM)
        t = t + out @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        h = ln(t, b + "norm2") @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        t = t + h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
    return ln(t, "norm")[:, 0] @ sd["head.weight"].T + sd["head.bias"]


def published_transform(image: Image.Image) -> torch.Tensor:
    """torchvision's Resize((224, 224)) on a PIL image (PIL bilinear), ToTensor, Normalize(.5)."""
    array = np.asarray(image.resize((224, 224), Image.BILINEAR)).astype(np.float64) / 255.0
    return torch.tensor((array - 0.5) / 0.5, dtype=torch.float32).permute(2, 0, 1)


def images(n: int, size: int = 64, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def test_published_file_loads_and_gives_the_reference_logits(tmp_path, monkeypatch) -> None:
    state = timm_state(len(STYLES), seed=1)
    path = save_published(tmp_path / "style50.pth", state, monkeypatch)
    if not torch.cuda.is_available():  # written like the GPU-saved originals
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    model = load_classifier(path, num_classes=len(STYLES))
    assert list(model.state_dict()) == list(state)  # timm's names and order
    pics = images(3, size=300)
    x = torch.stack([published_transform(im) for im in pics])
    torch.testing.assert_close(preprocess(pics), x, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_logits(state, x), atol=2e-4, rtol=1e-4)
        expected = reference_logits(state, x).argmax(-1).numpy()
    assert (model.predict(pics, batch_size=2) == expected).all()


def test_jpeg_round_trip_is_pils_default_save(tmp_path) -> None:
    pic = images(1, size=96, seed=3)[0]
    pic.save(tmp_path / "a.jpg")  # what the sampling scripts do
    from_disk = Image.open(tmp_path / "a.jpg")
    torch.testing.assert_close(preprocess([pic], jpeg_quality=75), preprocess([from_disk]))
    assert not torch.equal(preprocess([pic], jpeg_quality=75), preprocess([pic]))


def test_untrusted_objects_are_refused_unless_trusted(tmp_path, monkeypatch) -> None:
    state = timm_state(len(OBJECTS), seed=2)
    path = save_published(
        tmp_path / "style50_cls.pth", state, monkeypatch, args=argparse.Namespace(lr=1e-5)
    )
    with pytest.raises(ConfigError, match="^trust_pickle: .*style50_cls.pth holds objects"):
        load_classifier(path, num_classes=len(OBJECTS))
    model = load_classifier(path, trust_pickle=True, num_classes=len(OBJECTS))
    torch.testing.assert_close(model.head.bias, state["head.bias"])


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p, mp: p.write_bytes(b"not a checkpoint"), "not a readable torch checkpoint"),
        (
            lambda p, mp: torch.save({"state_dict": {}}, p),
            "expected a dict with 'model_state_dict'",
        ),
        (
            lambda p, mp: save_published(p, timm_state(20, 0), mp),
            "its head has 20 classes, expected 51",
        ),
        (
            lambda p, mp: save_published(
                p, OrderedDict({**timm_state(51, 0), "fc_norm.weight": torch.ones(DIM)}), mp
            ),
            r"unexpected \['fc_norm.weight'\]",
        ),
        (
            lambda p, mp: save_published(
                p, OrderedDict((k, v) for k, v in timm_state(51, 0).items() if k != "cls_token"), mp
            ),
            "not a timm ViT",
        ),
    ],
)
def test_wrong_files_give_one_line_errors_naming_the_file(tmp_path, monkeypatch, write, message):
    path = tmp_path / "style50.pth"
    write(path, monkeypatch)
    with pytest.raises(ValueError, match=message) as info:
        load_classifier(path, num_classes=len(STYLES))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# -- the metric with the published classifiers ------------------------------------------------


def forced(num_classes: int, label: int, seed: int) -> OrderedDict:
    """A classifier whose answer is always ``label`` (zero head, one-hot bias)."""
    state = timm_state(num_classes, seed)
    state["head.weight"] = torch.zeros_like(state["head.weight"])
    state["head.bias"] = torch.zeros(num_classes)
    state["head.bias"][label] = 10.0
    return state


@pytest.fixture
def classifiers(tmp_path, monkeypatch) -> dict[str, str]:
    style = save_published(
        tmp_path / "style50.pth", forced(len(STYLES), STYLES.index("Van_Gogh"), 1), monkeypatch
    )
    obj = save_published(
        tmp_path / "style50_cls.pth", forced(len(OBJECTS), OBJECTS.index("Dogs"), 2), monkeypatch
    )
    return {"style_classifier": str(style), "object_classifier": str(obj)}


def metric_config(classifiers, **kw):
    return METRICS.get("unlearncanvas").Config.from_dict({**classifiers, **kw})


def test_published_protocol_items(classifiers) -> None:
    cfg = metric_config(classifiers, concept="van gogh", protocol="published", cra="plain")
    assert cfg.concept == "Van_Gogh" and cfg.jpeg_quality == 75
    items = METRICS.get("unlearncanvas")(cfg).items(seed=0)
    styled = [i for i in items if i.group != "plain"]
    assert len(styled) == 20 * 50 * 5 and len(items) == 20 * 50 * 5 + 20 * 5
    assert {i.seed for i in items} == set(PUBLISHED_SEEDS)
    assert all(i.meta["style"] != "Seed_Images" for i in styled)
    target = [i for i in items if i.group == "target"]
    assert len(target) == 100 and {i.meta["style"] for i in target} == {"Van_Gogh"}
    assert "An image of Dogs in Van Gogh style." in {i.prompt for i in items}
    assert "An image of Dogs." in {i.prompt for i in items if i.group == "plain"}
    objects = metric_config(classifiers, concept="Dogs", protocol="published", cra="plain")
    assert all(i.group != "plain" for i in METRICS.get("unlearncanvas")(objects).items(0))


def test_published_protocol_sets_the_techniques_sampling(tmp_path, classifiers) -> None:
    metric = {"name": "unlearncanvas", "config": {**classifiers, "protocol": "published"}}
    data = {
        "output_dir": str(tmp_path / "run"),
        "technique": {"name": "none", "config": {"erase_concept": "Van Gogh", "model": "tiny-sd"}},
        "metric": metric,
    }
    cfg = parse_eval_config(data)
    assert cfg.technique.num_inference_steps == 100 and cfg.technique.guidance_scale == 9.0
    assert plan(cfg)["metrics"][0]["images"] == 5000
    data["technique"]["config"]["num_inference_steps"] = 50
    with pytest.raises(ConfigError, match=r"^technique.config.num_inference_steps: got 50"):
        parse_eval_config(data)
    with pytest.raises(ConfigError, match="style_classifier"):
        metric_config({}, concept="Dogs", protocol="published")
    with pytest.raises(ConfigError, match="^object_classifier: file"):
        metric_config(
            {**classifiers, "object_classifier": str(tmp_path / "no.pth")}, concept="Dogs"
        )


def test_cra_definitions_read_their_own_images(classifiers) -> None:
    metric = METRICS.get("unlearncanvas")

    def rows(group, obj_ok, style_ok=None):
        row = {"group": group, "object_correct": obj_ok}
        return row if style_ok is None else {**row, "style_correct": style_ok}

    table = [rows("target", 0.0, 0.0), rows("retain", 0.0, 1.0), rows("retain", 0.0, 1.0),
             rows("plain", 1.0), rows("plain", 1.0)]  # fmt: skip
    styled = metric(metric_config(classifiers, concept="Van_Gogh", cra="styled"))
    plain = metric(metric_config(classifiers, concept="Van_Gogh", cra="plain"))
    assert styled.summarize(table) == {"UA": 1.0, "IRA": 1.0, "CRA": 0.0}
    assert plain.summarize(table) == {"UA": 1.0, "IRA": 1.0, "CRA": 1.0}


def test_unlearncanvas_run_with_the_published_classifiers(tmp_path, classifiers) -> None:
    config = {
        **classifiers, "cra": "plain", "objects": ["Dogs", "Cats"], "styles": ["Van Gogh", "Monet"],
        "seeds": [188, 288], "jpeg_quality": 75, "batch_size": 4,
    }  # fmt: skip
    data = {
        "output_dir": str(tmp_path / "run"),
        "technique": {
            "name": "none",
            "config": {
                "erase_concept": "Van Gogh",
                "model": "minicanvas",
                "device": "cpu",
                "num_inference_steps": 2,
                "batch_size": 16,
            },
        },  # fmt: skip
        "metric": {"name": "unlearncanvas", "config": config},
        "bootstrap": 50,
    }
    result = run_eval(parse_eval_config(data))["metrics"]["unlearncanvas"]
    assert result["images"] == 2 * 2 * 2 + 2 * 2
    # The style judge always says Van_Gogh, the object judge always Dogs.
    assert result["values"] == {"UA": 0.0, "IRA": 0.0, "CRA": 0.5}
    table = (tmp_path / "run" / "unlearncanvas" / "images.csv").read_text()
    assert table.count(",plain,") == 4 and "Van_Gogh" in table


def test_bundled_classifier_still_judges_minicanvas(tmp_path) -> None:
    cfg = METRICS.get("unlearncanvas").Config.from_dict({"concept": "MOON", "cra": "plain"})
    metric = METRICS.get("unlearncanvas")(cfg)
    assert cfg.concept == "moon" and metric._kind() == "object"
    assert all(isinstance(i, Item) and i.group != "plain" for i in metric.items(0))


def test_default_size_is_vit_large_patch16_224() -> None:
    from saeuron.eval.unlearncanvas_vit import VisionTransformer

    with torch.device("meta"):  # shapes only: nothing is allocated
        imagenet = VisionTransformer(1000)
        styles = VisionTransformer(len(STYLES))
    # timm's model card of vit_large_patch16_224 (1000 classes): 304.3 M parameters.
    assert sum(p.numel() for p in imagenet.parameters()) == 304_326_632
    shapes = {k: tuple(v.shape) for k, v in styles.state_dict().items()}
    assert len(shapes) == 4 + 24 * 12 + 4 and shapes["blocks.23.attn.qkv.weight"] == (3072, 1024)
    assert shapes["pos_embed"] == (1, 197, 1024) and shapes["head.weight"] == (51, 1024)
    assert styles.blocks[0].attn.heads == 16


def test_the_tune_judge_reads_the_published_files(classifiers) -> None:
    # The same .pth layout as the published classifiers, read by `saeuron tune --judge
    # unlearncanvas --judge-options '{"style_classifier": ..., "object_classifier": ...}'`.
    judge = make_judge("unlearncanvas", **classifiers)
    pictures = images(3)
    # A prompt set's members are the class names, case and spaces aside.
    assert judge.classify(pictures, "style", ["van gogh", "monet"]) == ["van gogh"] * 3
    assert judge.classify(pictures, "style", ["Monet"]) == [""] * 3
    assert judge.classify(pictures, "object", ["dogs", "cats"]) == ["dogs"] * 3
    only_styles = make_judge("unlearncanvas", style_classifier=classifiers["style_classifier"])
    with pytest.raises(ConfigError, match="no object classifier"):
        only_styles.classify(pictures, "object", ["dogs"])
