#!/usr/bin/env bash
# Sets big_distill up on a fresh machine: where apt-get works, Debian's offline Fashion-MNIST and
# the venv module (pythonX.Y-venv); a virtual environment in .venv (re-created if it has no pip,
# e.g. left by an earlier run without the venv module); the package with its test dependencies.
# Usage: bash launch/setup.sh     (idempotent; run from anywhere; PYTHON: the base interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" ]]; then sed -n '2,5p' "$0"; exit 0; fi
PYTHON="${PYTHON:-python3}"
venv_ok() { [[ -x .venv/bin/python ]] && .venv/bin/python -m pip --version >/dev/null 2>&1; }
# Debian ships venv's ensurepip (which puts pip into a venv) in its own package, pythonX.Y-venv.
has_ensurepip() { "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; }

packages=()
[[ -d /usr/share/datasets/fashion-mnist ]] || packages+=(dataset-fashion-mnist)
venv_package="python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
if ! venv_ok && ! has_ensurepip; then packages+=("$venv_package"); fi
if [[ ${#packages[@]} -gt 0 ]] && command -v apt-get >/dev/null; then
  { apt-get update -qq && apt-get install -y -qq "${packages[@]}" >/dev/null; } \
    || echo "setup: could not install ${packages[*]} with apt-get" >&2
fi
[[ -d /usr/share/datasets/fashion-mnist ]] \
  || echo "setup: no offline Fashion-MNIST (dataset-fashion-mnist); TFDS will download it" >&2

if ! venv_ok; then
  if [[ -e .venv ]]; then echo "setup: .venv has no working pip; re-creating it" >&2; fi
  if ! has_ensurepip; then
    echo "setup: $PYTHON cannot create a venv with pip (no ensurepip module): install it" \
      "(Debian/Ubuntu: apt-get install $venv_package) and run setup again" >&2
    exit 1
  fi
  "$PYTHON" -m venv --clear .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
echo "setup: ready (.venv/bin/python)" >&2
