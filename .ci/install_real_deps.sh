#!/usr/bin/env bash
# Installs what tests/real and tests/serving need on a fresh Debian machine (run as root).
# Idempotent: each step is skipped when its result is already there.
#   usage: .ci/install_real_deps.sh [PYTHON]    (default: python3 on PATH)
set -euo pipefail
PY="${1:-python3}"

# libusb: pyrealsense2 links libusb-1.0.so.0 at import. libspnav0: our ctypes SpaceMouse binding.
# spacenavd: only for the optional real-daemon check. xvfb + xdotool: key presses in the e2e tests.
APT_PKGS=(libusb-1.0-0 libspnav0 spacenavd xvfb xdotool)
missing=()
for pkg in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Pinned: the fake UR controller is checked against this ur_rtde's protocol, and the camera
# fixtures against this librealsense's recorder (>= 2.58 writes .db3 only).
PIP_PKGS=(pyrealsense2==2.59.1.11053 ur-rtde==1.6.5 "websockets>=13" "pynput>=1.7" "scipy>=1.10")
"$PY" - "${PIP_PKGS[@]}" <<'PYEOF' || "$PY" -m pip install -q "${PIP_PKGS[@]}"
import sys
from importlib.metadata import version, PackageNotFoundError
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        ok = req.specifier.contains(version(req.name), prereleases=True)
    except PackageNotFoundError:
        ok = False
    if not ok:
        sys.exit(1)
PYEOF
# OpenCV resizes camera frames; any build will do (the sim extra brings the headless one).
"$PY" -c "import cv2" 2>/dev/null || "$PY" -m pip install -q "opencv-python-headless>=4.8"
