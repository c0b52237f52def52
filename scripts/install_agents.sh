#!/usr/bin/env bash
# Installs the real coding agents the client tests drive (tests/clients/) into ./.agents/, which is
# gitignored: Claude Code, Codex CLI and OpenCode from npm (native binaries inside the packages), and
# with --aider also Aider in its own virtualenv (a minute and 700 MB more, so not by default).
# Versions are pinned to the ones the tests were last run with, so CI does not change under us;
# override them (e.g. CLAUDE_CODE_VERSION=latest) to check a newer release.
# Re-running is cheap: npm and pip skip what is already there. Prints what each step took.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=.agents
: "${CLAUDE_CODE_VERSION:=2.1.197}" "${CODEX_VERSION:=0.171.0}" "${OPENCODE_VERSION:=1.18.33}" "${AIDER_VERSION:=0.86.2}"
with_aider=0
for arg in "$@"; do
  case "$arg" in
    --aider) with_aider=1 ;;
    *) echo "usage: $0 [--aider]" >&2; exit 2 ;;
  esac
done

mkdir -p "$dest"
step() {  # step NAME CMD...: runs CMD, prints seconds taken and the size of $dest
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo "install_agents: $name took $((SECONDS - start)) s; $dest is $(du -sh "$dest" | cut -f1)" >&2
}

if command -v npm >/dev/null 2>&1; then
  step npm npm install --prefix "$dest" --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "@openai/codex@$CODEX_VERSION" "opencode-ai@$OPENCODE_VERSION"
else
  echo "install_agents: npm not found: Claude Code, Codex CLI and OpenCode need Node.js 20+ and npm" >&2
fi

if [ "$with_aider" = 1 ]; then
  step aider sh -c "python3 -m venv '$dest/aider' && '$dest/aider/bin/pip' install -q --disable-pip-version-check 'aider-chat==$AIDER_VERSION'"
fi
