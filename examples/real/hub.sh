#!/usr/bin/env bash
# SAEs, features, bundles and recipes on the Hugging Face hub (needs the network and, to
# push, `huggingface-cli login`). tests/cli/test_hub.py runs push and pull on a faked hub.
set -euo pipefail
saeuron hub push saes/ you/my-saes --license mit
saeuron hub push features/ you/my-concepts
saeuron hub push my-bundle/ you/my-bundle --private
saeuron hub pull you/my-bundle
saeuron generate --model you/my-bundle --erase cat --prompt "a cat on a sofa" --out cat.png
saeuron generate --recipe you/my-recipe --prompt "a cat on a sofa" --out cat.png
