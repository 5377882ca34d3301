#!/usr/bin/env bash
# Installs what the simulated tasks need beyond `pip install -e ".[tasks]"`: the system packages
# for headless MuJoCo rendering and robosuite (without its second OpenCV build), on a fresh Debian
# machine (run as root, or with sudo). `make deps-sim` runs it.
# Idempotent: each step is skipped when its result is already there.
#   usage: .ci/install_sim_deps.sh [PYTHON]    (default: python3 on PATH)
set -euo pipefail
PY="${1:-python3}"

# Headless OpenGL for MuJoCo: EGL through Mesa (llvmpipe), OSMesa as the fallback backend.
APT_PKGS=(libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libglx-mesa0 libosmesa6)
missing=()
for pkg in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# True when every requirement given is installed at a matching version.
satisfied() {
    "$PY" - "$@" <<'PYEOF'
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
}

"$PY" -m pip --version >/dev/null
satisfied packaging 2>/dev/null || "$PY" -m pip install -q packaging

# The Python packages come from the tasks extra (`pip install -e ".[tasks]"`, which `make` runs
# first), robosuite aside: its metadata asks for opencv-python, a second OpenCV build beside the
# headless one policylab uses (both write the same cv2 module). Without its dependencies it
# imports, and what it needs besides (mink, numba, scipy, termcolor, pillow, mujoco) is in tasks.
# mujoco 3.3.0 (tasks): metaworld pins it, robosuite 1.5 breaks on 4.x.
satisfied "robosuite==1.5.1" || "$PY" -m pip install -q --no-deps robosuite==1.5.1

# Compile robosuite's numba kernels once here (cached on disk) instead of in the first test.
MUJOCO_GL="${MUJOCO_GL:-egl}" "$PY" - <<'PYEOF' >/dev/null 2>&1 || echo "warning: robosuite warm-up failed" >&2
import numpy as np
from policylab.envs.robosuite import RobosuiteEnv
env = RobosuiteEnv(task="Lift")
env.reset(seed=0)
env.step(np.zeros(7))
env.close()
PYEOF
