#!/usr/bin/env bash
# The GPU checks (scripts/gpu_check.py) from a checkout: JSON summary on stdout, exit 1 on a failure.
here="$(cd "$(dirname "$0")" && pwd)"; PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
