"""Where the MiniCanvas commands that change a bundle write by default: never into the
installed package, but into the user's copy of the shipped bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from saeuron.minicanvas.assets import (
    NAME,
    AssetConfig,
    bundle_folder,
    writable_bundle_folder,
    write_bundle,
)
from saeuron.minicanvas.guided import GuidedBuildConfig
from saeuron.minicanvas.model import ModelTrainConfig
from saeuron.minicanvas.saemnesia import SupervisedBuildConfig
from saeuron.models.bundles import find_bundle, is_packaged
from saeuron.models.resolve import resolve_model
from saeuron.utils.files import BUNDLE, PACKAGE_DATA


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "user"))
    monkeypatch.delenv("SAEURON_BUNDLES", raising=False)
    return tmp_path / "user" / "bundles" / NAME


def check_user_copy(folder: Path, user: Path) -> None:
    assert folder == user
    assert not is_packaged(folder)
    assert (folder / BUNDLE).is_file() and (folder / "unet" / "config.json").is_file()


def test_the_shipped_bundle_is_read_in_place(user: Path) -> None:
    # Reading never copies: only a write makes the user's copy.
    assert is_packaged(bundle_folder(resolve_model(NAME)))
    assert not user.exists()


def test_build_commands_default_to_the_users_copy(user: Path) -> None:
    shipped = bundle_folder(resolve_model(NAME))
    before = snapshot(shipped)
    # saeuron minicanvas train, assets and saemnesia build, with every option left default.
    check_user_copy(ModelTrainConfig().output_folder(), user)
    assets = AssetConfig()
    check_user_copy(writable_bundle_folder(assets.resolved_model, assets.out), user)
    build = SupervisedBuildConfig()
    check_user_copy(writable_bundle_folder(build.resolved_model, build.out), user)
    guided = GuidedBuildConfig()  # saeuron minicanvas guided build
    check_user_copy(writable_bundle_folder(guided.resolved_model, guided.out), user)
    # The copy shadows the shipped bundle by name, so later commands use what was built.
    found = find_bundle(NAME)
    assert found is not None and found.folder == user
    # A write goes to the copy; the package is untouched.
    write_bundle(user)
    assert snapshot(shipped) == before
    assert snapshot(user).keys() >= {k for k in before if not k.startswith("stats/")}


def test_an_explicit_out_is_kept(user: Path, tmp_path: Path) -> None:
    assert writable_bundle_folder(resolve_model(NAME), str(tmp_path / "mine")) == tmp_path / "mine"
    assert ModelTrainConfig(out=str(tmp_path / "m")).output_folder() == tmp_path / "m"
    assert not user.exists()


class Stop(Exception):
    pass


def test_the_package_data_is_where_the_shipped_bundle_is() -> None:
    # The check above means something only if the shipped bundle is inside the package.
    assert (PACKAGE_DATA / NAME / BUNDLE).is_file() and is_packaged(PACKAGE_DATA / NAME)
