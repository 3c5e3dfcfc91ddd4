#!/usr/bin/env bash
# Create (or reuse) the project's environment: system libraries + .venv with requirements.txt.
# Quick when everything is already there: a stamp file records the requirements it was built from.
set -euo pipefail
cd "$(dirname "$0")/.."

# System libraries that the wheels link against (open3d needs libusb, GL and X client libs), and
# the compiler + Python headers that scripts/build_tf2_msgs.py builds tf2_msgs with.
SYSTEM_PACKAGES=(libusb-1.0-0 libgl1 libegl1 libx11-6 libudev1 libgomp1 g++ python3-dev)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "[setup] installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  }
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt setup.py scripts/build_tf2_msgs.py | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating .venv (first run takes about a minute)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
# tf2_msgs (/tf, /tf_static) has no PyPI wheel: generated and compiled into .venv (skipped
# where tf2_msgs imports already, e.g. from a sourced ROS 2 distro)
.venv/bin/python scripts/build_tf2_msgs.py
echo "$want" > "$stamp"
echo "[setup] environment ready: .venv"
