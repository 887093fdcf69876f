"""The documentation site: every command on its pages is one the CLI accepts, the pages
speak of the software only, and ``mkdocs build --strict`` passes (slow tier).

The command-line and config references are generated from the code when the site is built
(docs/gen_reference.py), so the build itself checks that every config they name exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import check_command, commands_in

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
# Commands in ```text blocks are output, or the record of an earlier release's commands on
# the results pages (marked there as measured before the recipes): not parsed.
COMMANDS = sorted({c for page in PAGES for c in commands_in(page.read_text("utf-8"), True)})
# Words about who ran what on which machine, or about the tracker: not about the software.
NOT_ABOUT_THE_SOFTWARE = re.compile(
    r"was lent|were lent|lent to|project's sessions|no GPU was available|issue #\d|issues/\d+",
    re.I,
)


def test_the_docs_have_the_pages_and_commands() -> None:
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    for page in ("index.md", "recipes.md", "method.md", "hub.md", "guides/own-model.md",
                 "guides/tune.md", "guides/evaluate.md", "reference/cli.md",
                 "results/minicanvas.md"):  # fmt: skip
        assert page in names, page
    assert len(COMMANDS) >= 20, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_docs_command_parses(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    check_command(command, capsys)


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_pages_speak_of_the_software(page: Path) -> None:
    text = page.read_text("utf-8")
    found = NOT_ABOUT_THE_SOFTWARE.search(text)
    assert found is None, f"{page.name}: {text[max(0, found.start() - 80):found.end() + 80]!r}"


def test_the_benchmark_page_has_every_variant_and_the_new_columns() -> None:
    text = (DOCS / "results" / "minicanvas.md").read_text("utf-8")
    assert "## Every variant" in text and "\nsaeuron minicanvas bench\n" in text
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    for column in ("UA-alias", "scene UA", "scene ret."):
        assert f"style {column}" in header and f"object {column}" in header, column
    for variant in ("no erasure", 'preset="paper"', "default", "SAEmnesia"):
        assert f"| {variant}" in text or variant in text, variant
    for placeholder in ("TODO", "MAIN_TABLE", "PER_CONCEPT", "SEQUENTIAL", "ANALYSIS"):
        assert placeholder not in text, placeholder


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install '.[docs]')")
    done = subprocess.run(
        [mkdocs, "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text("utf-8")
    from saeuron.cli.main import COMMANDS as CLI_COMMANDS

    for command in CLI_COMMANDS:  # every command's --help is on the generated page
        assert f"usage: saeuron {command}" in cli, command
