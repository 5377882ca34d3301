#!/usr/bin/env bash
# Installs the system packages tests/real needs on a fresh Debian machine (run as root, or with sudo).
# Idempotent: each step is skipped when its result is already there.
#   usage: .ci/install_real_deps.sh    (`make deps-real` runs it)
set -euo pipefail

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

# The Python packages (pyrealsense2, ur-rtde, websockets, pynput, scipy) are the real and serving
# extras of pyproject.toml.
