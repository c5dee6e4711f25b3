#!/usr/bin/env bash
# Set up napari-lnm on a fresh Debian/Ubuntu machine: the system libraries napari's
# canvas needs under Xvfb (installed when we are root or have sudo), a virtual
# environment in .venv, and the package with every extra (napari, cnn, test).
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES="xvfb xauth libgl1-mesa-dri libgl1 libegl1 libdbus-1-3 libfontconfig1 \
 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0"

if command -v apt-get >/dev/null 2>&1 && ! command -v xvfb-run >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q $SYSTEM_PACKAGES >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q $SYSTEM_PACKAGES >/dev/null
  } || echo "install.sh: could not install Xvfb/GL libraries; GUI tests need them" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[all]"
echo "install.sh: napari-lnm installed in .venv"
