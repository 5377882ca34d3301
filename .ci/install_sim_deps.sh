#!/usr/bin/env bash
# Installs what the simulated tasks and their tests need (tests/envs/{pick_cube,metaworld,
# robosuite}, tests/data/importers) on a fresh Debian machine (run as root, or with sudo).
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

# mujoco 3.3.0: metaworld pins it, robosuite 1.5 breaks on 4.x. A 4.x install leaves
# mujoco-core / mujoco-studio behind that break `import mujoco` after a plain downgrade.
if ! satisfied "mujoco==3.3.0"; then
    "$PY" -m pip uninstall -y -q mujoco mujoco-core mujoco-studio 2>/dev/null || true
fi

# robosuite 1.5.1 + mink 0.0.13 keep numpy 2 (robosuite 1.5.2 pulls mink 0.0.5 -> numpy<2).
# metaworld imports `packaging` without declaring it. h5py: robomimic files; pyarrow: LeRobot.
PIP_PKGS=(mujoco==3.3.0 metaworld==3.1.1 robosuite==1.5.1 mink==0.0.13 "h5py>=3.10" "pyarrow>=15"
          "imageio>=2.34")
satisfied "${PIP_PKGS[@]}" || "$PY" -m pip install -q "${PIP_PKGS[@]}"

# gym-hil without its dependencies: they would allow mujoco up to 3.8 and bring hidapi, pygame
# and pynput for its gamepad/keyboard teleop, which policylab does not use. What its env code
# imports (gymnasium, mujoco, numpy) is installed above and by policylab itself.
satisfied "gym-hil==0.1.14" || "$PY" -m pip install -q --no-deps gym-hil==0.1.14

# Compile robosuite's numba kernels once here (cached on disk) instead of in the first test.
MUJOCO_GL="${MUJOCO_GL:-egl}" "$PY" - <<'PYEOF' >/dev/null 2>&1 || echo "warning: robosuite warm-up failed" >&2
import numpy as np
from policylab.envs.robosuite import RobosuiteEnv
env = RobosuiteEnv(task="Lift")
env.reset(seed=0)
env.step(np.zeros(7))
env.close()
PYEOF
