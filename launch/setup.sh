#!/usr/bin/env bash
# Sets big_distill up on a fresh machine: Debian's offline Fashion-MNIST (where apt-get works),
# a virtual environment in .venv, and the package with its test dependencies.
# Usage: bash launch/setup.sh     (idempotent; run from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" ]]; then sed -n '2,4p' "$0"; exit 0; fi
PYTHON="${PYTHON:-python3}"
if command -v apt-get >/dev/null && [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
    || echo "setup: could not install dataset-fashion-mnist; TFDS will download fashion_mnist" >&2
fi
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
echo "setup: ready (.venv/bin/python)" >&2
