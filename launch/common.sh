# Helpers sourced by the launch scripts: the checkout ($checkout), option parsing, usage from the
# script's header comment, shell quoting, paths. The scripts do not change directory: relative paths
# (WORKDIR, CONFIG, checkpoints in overrides) mean what they mean in the caller's directory, except
# in tpu_pod.sh, whose workers run in their copy of the checkout.
# Runs on bash 3.2 too (macOS, for tpu_pod.sh).

checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"  # This file's launch/.. (absolute).

usage() { awk 'NR > 1 && /^#( |$)/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# parse_args NAME MIN_ARGS OPTION_PATTERN [ARG ...]: reads the options before the positional
# arguments (up to the first `--config.*`): --help (prints usage, exit 0), --dry-run (or DRY_RUN=1;
# sets dry_run=1) and those matching OPTION_PATTERN, a glob ('' for none; collected in the array
# `options`). Sets the array `args` to the rest. An unknown option, or fewer than MIN_ARGS
# positional arguments, is a usage error (exit 2).
parse_args() {
  local name="$1" min="$2" pattern="$3"
  shift 3
  dry_run="${DRY_RUN:-0}"
  options=()
  while [[ $# -gt 0 && "$1" == --* && "$1" != --config.* ]]; do
    case "$1" in
      --help) usage; exit 0 ;;
      --dry-run) dry_run=1 ;;
      *) if [[ -n "$pattern" && "$1" == $pattern ]]; then options+=("$1")
         else echo "$name: unknown option $1" >&2; usage >&2; exit 2; fi ;;
    esac
    shift
  done
  if [[ $# -lt $min ]]; then usage >&2; exit 2; fi
  args=("$@")
}

# The default interpreter: the checkout's .venv/bin/python if present, else python3.
default_python() {
  local venv="$checkout/.venv/bin/python"
  if [[ -x "$venv" ]]; then echo "$venv"; else echo python3; fi
}

# Puts the checkout first on PYTHONPATH: `python -m big_distill.main` runs this checkout's package
# from any directory, also with an interpreter where it is not installed.
export_checkout() { export PYTHONPATH="$checkout${PYTHONPATH:+:$PYTHONPATH}"; }

# $1 made absolute against the current directory; absolute paths, URIs (gs://...) and '' unchanged.
absolute() {
  case "$1" in
    '' | /* | *://*) echo "$1" ;;
    *) local p="${1#./}"
       if [[ -z "$p" ]]; then echo "$PWD"; else echo "${PWD%/}/$p"; fi ;;
  esac
}

quote() {  # The arguments as one shell-quoted line (like Python's shlex.join).
  local a out=()
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$a")
    else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
