#!/usr/bin/env bash
# Fresh-machine set-up for crmsync, run by `make setup` (and so by `make test` / `make demo`):
#   1. .venv with crmsync and its dev extras, and the lab beside it (lab/: mock CRMs, harness,
#      bench, demo), both editable; reinstalled only when either pyproject.toml changed;
#   2. PostgreSQL and Redis reachable (scripts/ensure_services.py), URLs in .crmsync/env;
#   3. the crmsync database created and migrated;
#   4. the system tools the tests drive: Debian's chromium (dashboard browser tests)
#      and promtool (from the prometheus package: alert rule tests).
# Re-running is fast and changes nothing.
# Usage: scripts/setup.sh [--venv-only]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv
STAMP="$VENV/.installed"

fail() {
  echo "setup: error: $*" >&2
  exit 1
}

as_root_apt() {
  # Debian packages for a missing piece, only when we may install them.
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  echo "setup: installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

find_python() {
  # The first interpreter that is Python >= 3.11 (pyproject's requires-python).
  local py
  for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

venv_is_ours() {
  # A venv copied or committed from another folder has scripts whose #! lines point
  # there (and so run that folder's code): only a venv made here counts.
  [ -x "$VENV/bin/python" ] && [ -f "$VENV/pyvenv.cfg" ] && [ -f "$VENV/bin/pip" ] || return 1
  local interp
  interp="$(head -n 1 "$VENV/bin/pip" | sed 's/^#!//')"
  [ "$(cd "$(dirname "$interp")" 2>/dev/null && pwd -P)" = "$(cd "$VENV/bin" && pwd -P)" ]
}

ensure_venv() {
  if [ -e "$VENV" ] && ! venv_is_ours; then
    echo "setup: $VENV was not made in this folder; recreating it"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    local py
    py="$(find_python)" || { as_root_apt python3 python3-venv && py="$(find_python)"; } ||
      fail "Python 3.11 or newer is missing; install it (e.g. apt-get install python3 python3-venv) or set PYTHON=/path/to/python3.11."
    echo "setup: creating $VENV with $("$py" --version)"
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      as_root_apt python3-venv && "$py" -m venv "$VENV" ||
        fail "$py cannot create a virtualenv; install the venv module (e.g. apt-get install python3-venv)."
    fi
    rm -f "$STAMP"
  fi
  # Reinstall only when the dependencies may have changed.
  if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ lab/pyproject.toml -nt "$STAMP" ] ||
    [ ! -x "$VENV/bin/crmsync" ]; then
    echo "setup: installing crmsync with its dev extras and the lab into $VENV"
    "$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e '.[dev]' -e ./lab
    touch "$STAMP"
  fi
}

ensure_tools() {
  # Debian's packages, never a downloaded browser build (`playwright install` is not used).
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v faketime >/dev/null 2>&1 || missing+=(faketime)
  [ "${#missing[@]}" -eq 0 ] && return 0
  as_root_apt "${missing[@]}" ||
    fail "missing ${missing[*]} (the dashboard's browser tests, the alert rule tests and the many-hosts clock test need them); install them with apt-get install ${missing[*]}."
}

ensure_venv
[ "${1:-}" = "--venv-only" ] && exit 0
ensure_tools

"$VENV/bin/python" scripts/ensure_services.py
# shellcheck source=/dev/null
. ./.crmsync/env
"$VENV/bin/crmsync" migrate | sed 's/^/setup: /'
