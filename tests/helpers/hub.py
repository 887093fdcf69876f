"""A Hugging Face hub in a local folder: the functions saeuron.utils.hub calls, replaced.

``FakeHub(tmp_path).install(monkeypatch)`` makes pushes copy into ``remote/<owner>/<name>``
and downloads copy the files asked for into ``cache/<owner>/<name>``, so tests publish and
pull for real without a network.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import saeuron.utils.hub as hub


class RepositoryNotFoundError(OSError):
    """Named as huggingface_hub's, which is how saeuron.utils.hub recognises hub failures."""


@dataclass
class Commit:
    commit_url: str


class FakeHub:
    def __init__(self, root: Path):
        self.remote = root / "remote"
        self.cache = root / "cache"
        self.pushes: list[dict[str, Any]] = []

    def install(self, monkeypatch: Any) -> FakeHub:
        monkeypatch.setattr(hub, "create_repo", self.create_repo)
        monkeypatch.setattr(hub, "upload_folder", self.upload_folder)
        monkeypatch.setattr(hub, "snapshot_download", self.snapshot_download)
        monkeypatch.setattr(hub, "try_to_load_from_cache", self.try_to_load_from_cache)
        return self

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        (self.remote / repo_id).mkdir(parents=True, exist_ok=kwargs.get("exist_ok", False))
        return f"https://hub.example/{repo_id}"

    def upload_folder(self, *, repo_id: str, folder_path: str, **kwargs: Any) -> Commit:
        target = self.remote / repo_id
        if not target.is_dir():
            raise RepositoryNotFoundError(repo_id)
        shutil.copytree(folder_path, target, dirs_exist_ok=True)
        self.pushes.append({"repo_id": repo_id, **kwargs})
        return Commit(f"https://hub.example/{repo_id}/commit/{len(self.pushes)}")

    def snapshot_download(
        self, repo_id: str, allow_patterns: list[str] | str | None = None, **kwargs: Any
    ) -> str:
        source = self.remote / repo_id
        if not source.is_dir():
            raise RepositoryNotFoundError(repo_id)
        patterns = [allow_patterns] if isinstance(allow_patterns, str) else allow_patterns
        target = self.cache / repo_id
        for path in source.rglob("*"):
            name = path.relative_to(source).as_posix()
            if path.is_file() and (patterns is None or any(
                fnmatch.fnmatch(name, p) for p in patterns
            )):  # fmt: skip
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target / name)
        target.mkdir(parents=True, exist_ok=True)
        return str(target)

    def try_to_load_from_cache(self, repo_id: str, filename: str, **kwargs: Any) -> str | None:
        path = self.cache / repo_id / filename
        return str(path) if path.is_file() else None

    def files(self, repo_id: str) -> list[str]:
        root = self.remote / repo_id
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
