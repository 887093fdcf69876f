"""Packaging: one version, written once; the py.typed marker shipped; the changelog knows the
version."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import saeuron

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "saeuron"


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; 3.10 skips the checks of it
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_version_is_written_in_one_place() -> None:
    project = pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "saeuron.__version__"}
    # No other source file spells the version out.
    pattern = re.compile(rf"['\"]{re.escape(saeuron.__version__)}['\"]")
    spelled = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert spelled == ["src/saeuron/__init__.py"]


def test_py_typed_is_declared_package_data() -> None:
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in pyproject()["tool"]["setuptools"]["package-data"]["saeuron"]


def test_the_changelog_has_the_version_and_an_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert headings[0] == "Unreleased"
    assert saeuron.__version__ in headings


@pytest.mark.slow
def test_the_wheel_ships_py_typed_and_the_version(tmp_path) -> None:
    # Built from a copy of the sources: setuptools reuses a build/ folder it finds.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "data"))  # fmt: skip
    (source / "src" / "saeuron" / "data").mkdir()  # the bundle is not what is checked here
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)], check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("saeuron-*.whl")
    assert wheel.name.startswith(f"saeuron-{saeuron.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "saeuron/py.typed" in names
