"""A scripted Lift expert for robosuite: approach, descend, grasp, lift; usable from any state.

Same plan as the pick-cube expert, on robosuite's Panda with the OSC_POSE controller: the phase
is read from the state each step (gripper opening, end-effector to cube offset), so the expert
can take over mid-episode. Lift's cube has a random yaw: while approaching, the gripper turns
about the vertical (the shortest way, modulo 90 degrees) until its fingers face the cube's
sides. Roll and pitch are always steered back to pointing straight down, and get no action
noise (OSC_POSE integrates orientation deltas, so noise there would random-walk the tilt).
"""

from __future__ import annotations

import numpy as np

from policylab.envs.experts import PickExpert

OPEN_WIDTH = 0.078            # m between the fingers when fully open
HOLD_MIN, HOLD_MAX = 0.02, 0.07  # finger gap while the cube (4-4.4 cm) is held
XY_TOL, GRASP_TOL = 0.006, 0.01
LIFT_TARGET = 0.12           # m above the table-resting cube (success: 4 cm)
ACTION_SCALE = 0.05          # m per action unit (OSC_POSE output_max)
ROT_SCALE = 0.5              # rad per action unit
YAW_TOL = np.deg2rad(4)


def _yaw(xmat: np.ndarray) -> float:
    """Heading of a frame's x axis in the world xy plane, rad."""
    xmat = np.asarray(xmat).reshape(3, 3)
    return float(np.arctan2(xmat[1, 0], xmat[0, 0]))


class LiftExpert(PickExpert):
    """Scripted Lift policy over `RobosuiteEnv(task="Lift")`'s privileged state (arguments: `PickExpert`)."""

    HOVER = 0.08
    GRASP_Z = -0.005             # m: grasp a little below the cube's center

    @staticmethod
    def _state(env):
        se = env.sim_env
        eef = np.asarray(env.raw_obs["robot0_eef_pos"], dtype=np.float64)
        cube = np.asarray(se.sim.data.body_xpos[se.cube_body_id], dtype=np.float64)
        q = env.raw_obs["robot0_gripper_qpos"]
        return eef, cube, float(q[0] - q[1])

    @staticmethod
    def _yaw_error(env) -> float:
        """Cube yaw minus gripper yaw, wrapped to [-45, 45) degrees (a cube has 4 sides)."""
        se = env.sim_env
        cube_yaw = _yaw(se.sim.data.body_xmat[se.cube_body_id])
        grip_yaw = _yaw(se.sim.data.site_xmat[se.robots[0].eef_site_id["right"]])
        return float((cube_yaw - grip_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)

    @staticmethod
    def _tilt_correction(env) -> np.ndarray:
        """(2,) world x, y rotation that turns the gripper's approach axis back to straight down."""
        se = env.sim_env
        approach = se.sim.data.site_xmat[se.robots[0].eef_site_id["right"]].reshape(3, 3)[:, 2]
        axis = np.cross(approach, [0.0, 0.0, -1.0])  # |axis| = sin(tilt), turns approach down
        return np.clip(axis[:2] / ROT_SCALE * 2.0, -1, 1)

    def act(self, env) -> np.ndarray:
        action = np.asarray(self.clean_action(env.unwrapped), dtype=np.float64)
        if self.action_noise > 0:
            noise = self.rng.normal(0.0, self.action_noise, action.shape)
            noise[3:5] = 0.0
            action = action + noise
        space = env.unwrapped.action_space
        return np.clip(action, space.low, space.high)

    def clean_action(self, env) -> np.ndarray:
        eef, cube, width = self._state(env)
        rest_z = env.sim_env.table_offset[2] + 0.02
        grasp = cube + self.grasp_offset
        d_xy = np.linalg.norm(grasp[:2] - eef[:2])
        d_z = eef[2] - grasp[2]
        near = d_xy < 2.5 * XY_TOL and abs(d_z) < 2.5 * GRASP_TOL
        closing = width < OPEN_WIDTH - 0.01
        yaw_err = self._yaw_error(env)
        turn = 0.0

        if near and closing and HOLD_MIN < width < HOLD_MAX and d_xy < 0.02:
            # holding (or closing on) the cube: lift once the fingers have squeezed it
            squeezed = width < 0.046
            target = np.array([eef[0], eef[1], rest_z + LIFT_TARGET]) if squeezed else eef
            grip = 1.0
        elif near and d_xy < XY_TOL and abs(d_z) < GRASP_TOL:
            target, grip = eef, 1.0                            # in place: close
        elif closing and not near:                             # closed on nothing: open, back off
            target, grip = np.array([eef[0], eef[1], grasp[2] + self.hover]), -1.0
        elif d_xy < XY_TOL and abs(yaw_err) < YAW_TOL:         # aligned: descend
            target, grip = grasp, -1.0
        else:                                                  # approach at hover height, turn
            low = eef[2] < grasp[2] + 0.5 * self.hover
            xy = eef[:2] if low else grasp[:2]
            target, grip = np.array([xy[0], xy[1], grasp[2] + self.hover]), -1.0
            turn = float(np.clip(yaw_err / ROT_SCALE * 2.0, -1, 1))
        delta = np.clip((target - eef) / ACTION_SCALE * 2.0, -1, 1) * self.speed
        return np.concatenate([delta, self._tilt_correction(env), [turn], [grip]])

    def progress(self, env) -> float:
        eef, cube, _ = self._state(env)
        lift = cube[2] - (env.sim_env.table_offset[2] + 0.02)
        return float(-np.linalg.norm(cube - eef) + 10 * max(lift, 0.0))
