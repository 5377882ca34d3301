"""gym-hil's Panda control step (`FrankaGymEnv.apply_action`) with the same arithmetic, faster.

gym-hil runs its operational-space controller (`gym_hil.controllers.opspace`) in Python before
each of the 50 physics substeps of a 0.1 s control step. Profiling a state-only episode showed
that controller, not MuJoCo, taking about 3/4 of the time: ~60 tiny numpy calls per substep,
most of them rebuilding constants (gains, identity), allocating Jacobian and inertia buffers,
going through `np.linalg` wrappers, and doing quaternion math on 4-element arrays.

`FastOpspace.apply_action` computes the same torques, bit for bit:

- Every BLAS/LAPACK call of the original (the matmuls, `inv`, `det`, `pinv`) is kept, with the
  same operand shapes, memory layouts and evaluation order, so the same kernels run on the same
  numbers. `inv` and `det` call numpy's linalg gufuncs directly (what `np.linalg.inv`/`det` do
  after their argument checks), under the error state `np.linalg.inv` sets; `pinv` is numpy's
  code with the SVD gufunc called directly.
- What changed is only how elementwise and scalar arithmetic is executed: the quaternion and PD
  terms run on Python floats, which are the same IEEE-754 doubles with the same operation
  order, so each result rounds identically. Transcendentals stay numpy's (`np.arccos` may use
  a different implementation than `math.acos`); `sqrt` is correctly rounded in both.
- Constants (gains, identity, index arrays, array views into MjData) are built once.
- Sensors are skipped in all but the last substep of a control step (`mjDSBL_SENSOR`): they
  are outputs only, nothing in the dynamics or the controller reads them, and the last substep
  computes them as before, so `sensordata` after a step is unchanged too.

`tests/envs/pick_cube/test_fast_control.py` checks exact equality of qpos, qvel, ctrl,
warm-start accelerations and sensordata against gym-hil's own `apply_action`.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np
from gym_hil.mujoco_gym_env import MAX_GRIPPER_COMMAND
from numpy.linalg import (
    LinAlgError,
    _umath_linalg,  # the gufuncs behind np.linalg.inv / det
)

# gym-hil's `opspace` defaults, as `apply_action` calls it (no acceleration limits)
POS_GAINS = (200.0, 200.0, 200.0)
ORI_GAINS = (200.0, 200.0, 200.0)
DAMPING_RATIO = 1.0
NULLSPACE_STIFFNESS = 0.5
DET_THRESHOLD = 1e-2   # |det| of the task-space inverse inertia below which gym-hil uses pinv
PINV_RCOND = 1e-2
SENSORS_OFF = int(mujoco.mjtDisableBit.mjDSBL_SENSOR)


def _raise_singular(err, flag):
    raise LinAlgError("Singular matrix")


def _gains(kp) -> tuple[np.ndarray, np.ndarray]:
    """Negated (kp, kd) per axis, computed with gym-hil's expressions (kd = zeta * 2 * sqrt(kp))."""
    kp = np.asarray(kp)
    kd = DAMPING_RATIO * 2 * np.sqrt(kp)
    kp_kv = np.stack([kp, kd], axis=-1)
    return -kp_kv[:, 0], -kp_kv[:, 1]


class FastOpspace:
    """Runs one control step of a gym-hil `FrankaGymEnv` (e.g. `PandaPickCubeGymEnv`).

    Args:
        sim: the gym-hil env; its model, data, substep count, home pose, Cartesian bounds and
            cached ids are read once, so they must not be replaced afterwards (resets are fine:
            they write into the same MjData).
        skip_sensors: skip sensor evaluation in all substeps but the last (see the module doc).
    """

    def __init__(self, sim, skip_sensors: bool = True):
        self.model, self.data = m, d = sim.model, sim.data
        self.n_substeps = int(sim._n_substeps)
        self.bounds = sim._cartesian_bounds
        self.site_id = int(sim._pinch_site_id)
        self.dof_ids = np.asarray(sim._panda_dof_ids)
        self.ctrl_ids = np.asarray(sim._panda_ctrl_ids)
        self.gripper_ctrl_id = int(sim._gripper_ctrl_id)
        self.q_des = np.asarray(sim._home_position)
        self.skip_sensors = skip_sensors

        n = len(self.dof_ids)
        self.neg_kp_pos, self.neg_kd_pos = (v.tolist() for v in _gains(POS_GAINS))
        self.neg_kp_ori, self.neg_kd_ori = (v.tolist() for v in _gains(ORI_GAINS))
        self.neg_kp_joint, self.neg_kd_joint = _gains(np.full((n,), NULLSPACE_STIFFNESS))
        self.eye = np.eye(n)
        self.dof_ix = np.ix_(self.dof_ids, self.dof_ids)
        # a slice where the arm's dofs are contiguous (they are: 0..6), same values as the ids
        start = int(self.dof_ids[0])
        self.dof_range = np.array_equal(self.dof_ids, np.arange(start, start + n))
        self.dofs = slice(start, start + n) if self.dof_range else self.dof_ids

        # mj_jacSite and mj_fullM overwrite every entry, so one buffer each serves all substeps
        self.jacp, self.jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        # Jacobians in the layout gym-hil's fancy indexing and concatenate produce (Fortran
        # order): BLAS may sum in a different order for another layout, and differ in ulps
        self.J_v, self.J_w = np.empty((3, n), order="F"), np.empty((3, n), order="F")
        self.J = np.empty((6, n), order="F")
        self.full_m = np.zeros((m.nv, m.nv))
        # views into MjData (its arrays never move)
        self.qpos, self.qvel, self.ctrl = d.qpos, d.qvel, d.ctrl
        self.qm, self.qfrc_bias = d.qM, d.qfrc_bias
        self.site_xpos = d.site_xpos[self.site_id]
        self.site_xmat = d.site_xmat[self.site_id]
        self.mocap_pos, self.mocap_quat = d.mocap_pos[0], d.mocap_quat[0]

    def apply_action(self, action) -> None:
        """gym-hil's `FrankaGymEnv.apply_action`: (7,) [dx, dy, dz, rx, ry, rz, grasp] (m; the
        rotation entries are ignored, as in gym-hil; grasp is added to the gripper command in
        [0, 1]), then `n_substeps` controller + `mj_step` substeps."""
        x, y, z, _, _, _, grasp_command = action
        d = self.data
        # the action bookkeeping, verbatim from gym-hil (once per control step)
        pos = self.mocap_pos.copy()
        dpos = np.asarray([x, y, z])
        self.mocap_pos[:] = np.clip(pos + dpos, *self.bounds)
        g = d.ctrl[self.gripper_ctrl_id] / MAX_GRIPPER_COMMAND
        ng = np.clip(g + grasp_command, 0.0, 1.0)
        d.ctrl[self.gripper_ctrl_id] = ng * MAX_GRIPPER_COMMAND

        opt = self.model.opt
        flags = int(opt.disableflags)
        skip = self.skip_sensors and not flags & SENSORS_OFF
        x_des = self.mocap_pos.tolist()
        quat_des = self.mocap_quat.tolist()
        ctrl_ids = self.ctrl_ids
        # np.linalg.inv's error state, entered once per control step rather than per call (so a
        # failing SVD in the pinv branch, or a NaN anywhere, also raises LinAlgError: both only
        # happen once the state is no longer finite, where gym-hil would warn and go on)
        with np.errstate(call=_raise_singular, invalid="call", over="ignore", divide="ignore",
                         under="ignore"):
            try:
                for i in range(self.n_substeps):
                    last = i == self.n_substeps - 1
                    if skip:
                        opt.disableflags = flags if last else flags | SENSORS_OFF
                    self.ctrl[ctrl_ids] = self.torque(x_des, quat_des)
                    mujoco.mj_step(self.model, d)
            finally:
                opt.disableflags = flags

    def torque(self, x_des: list[float], quat_des: list[float]) -> np.ndarray:
        """gym-hil's `opspace(...)` torques (N m, per arm joint) for a site target `x_des` (m)
        and orientation `quat_des` (w, x, y, z), with its default gains and gravity compensation."""
        m, d = self.model, self.data
        dof_ids = self.dof_ids
        q = self.qpos[dof_ids]
        dq = self.qvel[dof_ids]

        mujoco.mj_jacSite(m, d, self.jacp, self.jacr, self.site_id)
        J_v, J_w, J = self.J_v, self.J_w, self.J
        J_v[...] = self.jacp[:, self.dofs]
        J_w[...] = self.jacr[:, self.dofs]
        J[:3], J[3:] = J_v, J_w

        # position PD: (x - x_des) * -kp + dx * -kd
        dx = (J_v @ dq).tolist()
        nkp, nkd = self.neg_kp_pos, self.neg_kd_pos
        ddx = [(xi - xd) * kp + dxi * kd
               for xi, xd, dxi, kp, kd in zip(self.site_xpos.tolist(), x_des, dx, nkp, nkd)]

        # orientation PD on the axis-angle error of quat * conj(quat_des)
        quat = _mat_to_quat(self.site_xmat)
        # gym-hil's `quat @ quat_des < 0` (a BLAS dot): only the sign is used, which a different
        # summation order could flip only for |dot| within ulps of 0 (hand 180 degrees off target)
        if sum(a * b for a, b in zip(quat, quat_des)) < 0.0:
            quat = [-v for v in quat]
        ori_err = _quat_to_axisangle(_quat_diff_active(quat_des, quat))
        w = (J_w @ dq).tolist()
        nkp, nkd = self.neg_kp_ori, self.neg_kd_ori
        dw = [e * kp + wi * kd for e, wi, kp, kd in zip(ori_err, w, nkp, nkd)]

        mujoco.mj_fullM(m, self.full_m, self.qm)
        # any layout: the inv gufunc copies M into a LAPACK buffer first
        M = self.full_m[self.dofs, self.dofs] if self.dof_range else self.full_m[self.dof_ix]
        M_inv = _umath_linalg.inv(M, signature="d->d")
        Mx_inv = J @ M_inv @ J.T
        if abs(_umath_linalg.det(Mx_inv, signature="d->d")) >= DET_THRESHOLD:
            Mx = _umath_linalg.inv(Mx_inv, signature="d->d")
        else:
            Mx = _pinv(Mx_inv, PINV_RCOND)

        tau = J.T @ Mx @ np.array(ddx + dw)
        # joint-space PD toward the home pose, projected into the nullspace
        ddq = (q - self.q_des) * self.neg_kp_joint + dq * self.neg_kd_joint
        Jnull = M_inv @ J.T @ Mx
        tau += (self.eye - J.T @ Jnull.T) @ ddq
        tau += self.qfrc_bias[dof_ids]
        return tau


def _pinv(a: np.ndarray, rcond: float) -> np.ndarray:
    """`np.linalg.pinv(a, rcond)` for a real 2-D `a`: the same SVD gufunc and post-processing
    (same expressions, so the same layouts reach BLAS), without the wrappers' checks."""
    u, s, vt = _umath_linalg.svd_s(a.conjugate(), signature="d->ddd")
    cutoff = np.asarray(rcond)[..., np.newaxis] * np.amax(s, axis=-1, keepdims=True)
    large = s > cutoff
    s = np.divide(1, s, where=large, out=s)
    s[~large] = 0
    return np.matmul(np.transpose(vt), np.multiply(s[..., np.newaxis], np.transpose(u)))


def _mat_to_quat(xmat: np.ndarray) -> list[float]:
    """gym-hil's `mat_to_quat` of a row-major (9,) rotation matrix, as floats (w, x, y, z)."""
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = xmat.tolist()
    trace = m00 + m11 + m22  # np.trace's order: ((0 + m00) + m11) + m22
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        return [0.25 * s, (m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s]
    if m00 > m11 and m00 > m22:
        s = 2.0 * math.sqrt(1.0 + m00 - m11 - m22)
        return [(m21 - m12) / s, 0.25 * s, (m01 + m10) / s, (m02 + m20) / s]
    if m11 > m22:
        s = 2.0 * math.sqrt(1.0 + m11 - m00 - m22)
        return [(m02 - m20) / s, (m01 + m10) / s, 0.25 * s, (m12 + m21) / s]
    s = 2.0 * math.sqrt(1.0 + m22 - m00 - m11)
    return [(m10 - m01) / s, (m02 + m20) / s, (m12 + m21) / s, 0.25 * s]


def _quat_diff_active(source: list[float], target: list[float]) -> list[float]:
    """gym-hil's `quat_diff_active`: target * conj(source), (w, x, y, z)."""
    w1, x1, y1, z1 = target
    w2, x2, y2, z2 = source[0], -source[1], -source[2], -source[3]
    return [w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2]


def _quat_to_axisangle(quat: list[float]) -> list[float]:
    """gym-hil's `quat_to_axisangle`: angle * axis (rad), including its degenerate branches."""
    w, x, y, z = quat
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    if norm < 1e-10:
        return [0.0, 0.0, 0.0]
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    angle = 2.0 * float(np.arccos(min(max(w, -1.0), 1.0)))
    arg = 1.0 - w * w
    sin_half_angle = math.sqrt(arg) if arg >= 0 else math.nan  # np.sqrt gives nan there
    if sin_half_angle < 1e-10:
        return [angle * x, angle * y, angle * z]
    return [angle * (x / sin_half_angle), angle * (y / sin_half_angle), angle * (z / sin_half_angle)]
