"""``saeuron env``: what a bug report needs to know about this installation.

Versions (saeuron, Python, the libraries it runs on, each optional extra's packages), the
devices torch sees, the cache folders and their sizes, and the hub settings. Nothing here
touches the network: versions come from the installed distributions' metadata (no library
is imported for them), the hub settings from ``huggingface_hub.constants`` and the
environment. Only torch is imported, for the devices. A hub token is reported as set or not,
never printed.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

# Named first, in this order: what an erasure runs on. The distribution's other requirements
# follow them.
CORE = ("torch", "diffusers", "transformers", "huggingface_hub")
# The extra of the development tools is not a feature of the package.
TOOL_EXTRAS = ("dev",)
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Print the versions of saeuron, Python and the libraries it runs on (and "
        "which optional extras are installed), the devices torch sees, the cache folders with "
        "their sizes and the Hugging Face hub settings. Reads no network; never prints a "
        "token. Paste its output into a bug report.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object, for tools")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    report = collect()
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def collect() -> dict[str, Any]:
    """The whole report as plain data (what ``--json`` prints)."""
    from saeuron import __version__

    return {
        "saeuron": {"version": __version__, "location": str(Path(__file__).resolve().parents[1])},
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
        "packages": packages(),
        "extras": extras(),
        "devices": devices(),
        "caches": caches(),
        "hub": hub(),
    }


def installed(name: str) -> str | None:
    """The installed version of distribution ``name``, or None; imports nothing."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _requirements() -> list[tuple[str, str | None]]:
    """(package, extra or None) for every requirement saeuron's metadata declares."""
    try:
        lines = metadata.requires("saeuron") or []
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        lines = []
    out = []
    for line in lines:
        name = _NAME.match(line)
        if name:
            extra = _EXTRA.search(line)
            out.append((name.group(1), extra.group(1) if extra else None))
    return out


def packages() -> dict[str, str | None]:
    """The core libraries, then saeuron's other base requirements: version or None."""
    names = list(CORE)
    for name, extra in _requirements():
        if extra is None and _canonical(name) not in {_canonical(n) for n in names}:
            names.append(name)
    return {name: installed(name) for name in names}


def extras() -> dict[str, dict[str, Any]]:
    """Each optional extra: whether all its packages are installed, and their versions."""
    grouped: dict[str, dict[str, str | None]] = {}
    for name, extra in _requirements():
        if extra is not None and extra not in TOOL_EXTRAS:
            grouped.setdefault(extra, {})[name] = installed(name)
    return {
        extra: {"installed": all(v is not None for v in found.values()), "packages": found}
        for extra, found in sorted(grouped.items())
    }


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def devices() -> dict[str, Any]:
    """What torch sees: CUDA (with each GPU's name and memory) and MPS."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch
    except ImportError as err:
        return {"torch": None, "error": str(err), "CUDA_VISIBLE_DEVICES": visible}
    gpus = []
    cuda = torch.cuda.is_available()
    if cuda:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    mps = getattr(torch.backends, "mps", None)
    return {
        "torch": torch.__version__,
        "cuda": {"available": cuda, "version": torch.version.cuda, "gpus": gpus},
        "mps": {"available": bool(mps is not None and mps.is_available())},
        "CUDA_VISIBLE_DEVICES": visible,
    }


def folder_size(path: Path) -> int:
    """Bytes of the regular files under ``path``. Links are not followed: the hub cache's
    snapshots link to its blobs, which would otherwise count twice."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # unreadable or vanished meanwhile: what can be read is counted
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def _folder(path: Path, set_by: str | None) -> dict[str, Any]:
    exists = path.is_dir()
    return {
        "path": str(path),
        "set_by": set_by,
        "exists": exists,
        "size_bytes": folder_size(path) if exists else 0,
    }


def caches() -> dict[str, Any]:
    """The hub's cache (models, SAEs, bundles pulled) and saeuron's own folder."""
    from huggingface_hub import constants

    from saeuron.utils.files import USER_DIR_ENV, user_dir

    hub_env = next((n for n in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME") if n in
                    os.environ), None)  # fmt: skip
    return {
        "huggingface": _folder(Path(constants.HF_HUB_CACHE), hub_env),
        "saeuron": _folder(user_dir(), USER_DIR_ENV if os.environ.get(USER_DIR_ENV) else None),
    }


def hub() -> dict[str, Any]:
    """The hub settings in force: offline or not, which endpoint, whether a token is set."""
    from huggingface_hub import constants, get_token

    env = next((n for n in TOKEN_ENV if os.environ.get(n)), None)
    # get_token reads the environment, then the token file: no request is made.
    token_set = bool(get_token())
    source = env or ("token file" if token_set else None)
    return {
        "offline": bool(constants.HF_HUB_OFFLINE),
        "endpoint": constants.ENDPOINT,
        "token": {"set": token_set, "source": source},
        "HF_HOME": constants.HF_HOME,
    }


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"  # pragma: no cover


def render(report: dict[str, Any]) -> str:
    """The report as text: one ``key: value`` per line under each section."""
    lines = []

    def section(title: str, rows: list[tuple[str, Any]]) -> None:
        lines.append(f"{title}:")
        width = max((len(k) for k, _ in rows), default=0)
        lines.extend(f"  {k:{width}s}  {v}" for k, v in rows)

    sae, py = report["saeuron"], report["python"]
    section(
        "saeuron",
        [("version", sae["version"]), ("location", sae["location"])],
    )
    section(
        "python",
        [
            ("version", f"{py['version']} ({py['implementation']})"),
            ("executable", py["executable"]),
            ("platform", py["platform"]),
        ],
    )
    section(
        "packages",
        [(name, v or "not installed") for name, v in report["packages"].items()],
    )
    section(
        "extras",
        [
            (
                extra,
                ("installed: " if info["installed"] else "not installed: ")
                + ", ".join(f"{p} {v or '-'}" for p, v in info["packages"].items()),
            )
            for extra, info in report["extras"].items()
        ],
    )
    dev = report["devices"]
    if dev.get("torch") is None:
        section("devices", [("torch", f"not importable ({dev.get('error')})")])
    else:
        cuda = dev["cuda"]
        rows: list[tuple[str, Any]] = [
            ("cuda", f"yes (CUDA {cuda['version']})" if cuda["available"] else "no"),
        ]
        rows += [
            (f"gpu {g['index']}", f"{g['name']}, {g['memory_gib']} GiB, sm {g['capability']}")
            for g in cuda["gpus"]
        ]
        rows.append(("mps", "yes" if dev["mps"]["available"] else "no"))
        if dev["CUDA_VISIBLE_DEVICES"] is not None:
            rows.append(("CUDA_VISIBLE_DEVICES", dev["CUDA_VISIBLE_DEVICES"]))
        section("devices", rows)

    def cache_row(info: dict[str, Any]) -> str:
        where = info["path"] + (f" (from {info['set_by']})" if info["set_by"] else "")
        return f"{where}: {_size(info['size_bytes'])}" if info["exists"] else f"{where}: absent"

    section("caches", [(name, cache_row(info)) for name, info in report["caches"].items()])
    hub_ = report["hub"]
    token = hub_["token"]
    section(
        "hub",
        [
            ("offline", "yes (HF_HUB_OFFLINE)" if hub_["offline"] else "no"),
            ("endpoint", hub_["endpoint"]),
            ("token", f"set ({token['source']})" if token["set"] else "not set"),
            ("HF_HOME", hub_["HF_HOME"]),
        ],
    )
    return "\n".join(lines)
