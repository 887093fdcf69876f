#!/usr/bin/env bash
# Install eai-sparsify (the baseline of `saeuron bench perf --only training`) into
# benchmarks/.sparsify, outside saeuron's environment: saeuron never depends on it.
#
# Every package goes in with --no-deps, one by one, so pip can never pull a second torch
# (sparsify declares torch, transformers, datasets, accelerate...). Only the small pure-Python
# modules that sparsify's SparseCoder, config and optimisers import are added; the benchmark
# loads those submodules without sparsify/__init__.py, whose trainer import needs `datasets`.
#
# Idempotent: a second run with everything present does nothing.
# Usage: benchmarks/install_sparsify.sh [python]   (default: python3 on PATH, e.g. the venv's)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="$here/.sparsify"
python="${1:-python3}"

# name==version  import-name
packages=(
  "eai-sparsify==1.3.3 sparsify"
  "einops==0.8.2 einops"
  "natsort==8.4.0 natsort"
  "simple-parsing==0.1.9 simple_parsing"
  "docstring-parser==0.18.0 docstring_parser"
  "schedulefree==1.4.1 schedulefree"
)

mkdir -p "$target"
for entry in "${packages[@]}"; do
  read -r spec module <<<"$entry"
  name="${spec%%==*}"
  version="${spec##*==}"
  dist_glob="$target/$(echo "$name" | tr '-' '_')-$version.dist-info"
  if [[ -d "$target/$module" && -d "$dist_glob" ]]; then
    echo "ok       $spec"
    continue
  fi
  echo "install  $spec"
  "$python" -m pip install --quiet --no-deps --upgrade --target "$target" "$spec"
done
echo "eai-sparsify ready in $target"
