# Helpers sourced by the launch scripts: usage from the script's header comment, shell quoting.
usage() { awk 'NR > 1 && /^#( |$)/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
quote() {  # The arguments as one shell-quoted line (like Python's shlex.join).
  local a out=()
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$a")
    else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
