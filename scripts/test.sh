#!/usr/bin/env bash
# Installs what the tests need (Python packages; Prometheus, Alertmanager, Chromium and PostgreSQL from
# Debian when they are missing and we may install them) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
# Headless Chromium drives the built-in page in tests/test_page.py (over the DevTools protocol).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# tmux drives `watch` in tests/test_watch.py (send-keys, capture-pane).
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
# PostgreSQL for the storage tests on the second engine: the tests start their own throwaway cluster.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "WARNING: ${need_apt[*]} not installed and cannot apt-get here: the Prometheus stack and page tests will say so" >&2
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# With initdb here, the PostgreSQL tests must run: a broken cluster fails them instead of skipping.
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  export OPENROUTER_SPEND_POSTGRES=1
fi

# The real coding agents (Claude Code, Codex CLI, OpenCode, Aider) for tests/clients/. When they
# install, their tests must run (a missing agent then fails instead of skipping); when the
# registry or npm is not there, those tests skip and say so.
if command -v npm >/dev/null 2>&1 && bash scripts/install_agents.sh --aider; then
  export OPENROUTER_SPEND_AGENTS=1
else
  echo "WARNING: the coding agents could not be installed: tests/clients will be skipped" >&2
fi
exec python3 -m pytest "$@"
