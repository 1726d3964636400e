#!/usr/bin/env bash
# Install what the tests need, prepare the real models, then lint, type-check and run the tests.
# Usage: bash scripts/test.sh [pytest arguments]
# Environment: PYTHON (interpreter for the venv, default python3), OPENARC_TEST_VENV (default .venv),
#              OPENARC_MODELS_DIR (model cache, default ~/.cache/openarc-mcp/models).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${OPENARC_TEST_VENV:-.venv}
python=${PYTHON:-python3}
pip_quiet=(--quiet --disable-pip-version-check)

step() { printf '\n== %s\n' "$*" >&2; }

step "installing openarc-mcp with its test and convert extras into $venv"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install "${pip_quiet[@]}" --upgrade pip
# The constraint keeps torch at its CPU build; optimum-intel's torchvision is removed again
# (a CUDA-built torchvision breaks optimum's imports, and exports do not need it).
"$venv/bin/python" -m pip install "${pip_quiet[@]}" -c scripts/torch-cpu-constraints.txt -e ".[test,convert]"
"$venv/bin/python" -m pip uninstall "${pip_quiet[@]}" -y torchvision >/dev/null 2>&1 || true
# Bytecode written as a regular install writes it: the servers the tests start do not compile
# the package from source each time (PYTHONDONTWRITEBYTECODE may be set).
"$venv/bin/python" -m compileall -q openarc_mcp

export OPENARC_MODELS_DIR=${OPENARC_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/openarc-mcp/models}
step "preparing the real models in $OPENARC_MODELS_DIR (skipped when already there)"
"$venv/bin/openarc-mcp" models prepare smollm2-135m-instruct all-minilm-l6-v2 minilm-l6-cosine-reranker \
  kokoro-82m whisper-base-int8 whisper-tiny-en tiny-random-llava

# Kokoro speaks words missing from its lexicons through espeak-ng (Debian package); without it those
# words are dropped, so the tests' machine gets it when it can.
if ! ldconfig -p 2>/dev/null | grep -q libespeak-ng; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing espeak-ng (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng; } >&2 \
      || echo "could not install espeak-ng: out-of-vocabulary words will be dropped by Kokoro" >&2
  else
    echo "espeak-ng is not installed: out-of-vocabulary words will be dropped by Kokoro" >&2
  fi
fi

inspector_dir=.cache/inspector
inspector_version=2.12.0
if command -v npm >/dev/null 2>&1; then
  if [ ! -x "$inspector_dir/node_modules/.bin/mcp-inspector" ]; then
    step "installing the MCP Inspector CLI $inspector_version from npm into $inspector_dir"
    npm install --silent --no-audit --no-fund --prefix "$inspector_dir" \
      "@modelcontextprotocol/inspector@$inspector_version" >&2
  fi
  export OPENARC_INSPECTOR="$PWD/$inspector_dir/node_modules/.bin/mcp-inspector"
else
  step "npm not found: the MCP Inspector test will be skipped"
fi

step "ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
step "mypy --strict"
"$venv/bin/mypy"
"$venv/bin/mypy" benchmarks  # scripts, not a package: checked as files

step "pytest"
status=0
"$venv/bin/python" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests for these arguments: $*" >&2
  status=0
fi
exit "$status"
