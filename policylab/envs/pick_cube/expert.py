"""A scripted pick-cube expert: approach, descend, grasp, lift; usable from any state.

The phase is read from the state every step, never remembered, so the same expert records
demonstrations and acts as the simulated human that takes over from a policy mid-episode:

    holding the cube (fingers closed on it)      -> lift (gripper keeps closing)
    fingers closed, or closing, away from the cube -> open, and rise above the cube
    above the cube, aligned in x, y              -> descend; at grasp height, close
    otherwise                                    -> rise to hover height, move over the cube

Variations (so demonstrations are not all identical): `action_noise` (Gaussian, action units)
and per-episode offsets drawn in `reset`: hover height, grasp point within the cube, approach
speed.
"""

from __future__ import annotations

import numpy as np

from policylab.envs.experts import PickExpert

HOLD_MIN, HOLD_MAX = 0.2, 0.9   # finger closure while a 4 cm cube is between the fingers
XY_TOL = 0.008                  # m: aligned over the cube
GRASP_TOL = 0.012               # m: at grasp height
LIFT_TARGET = 0.15              # m above the resting cube (success is 0.1 m)


class PickCubeExpert(PickExpert):
    """Scripted pick-cube policy over `PickCubeEnv`'s privileged state (arguments: `PickExpert`)."""

    HOVER = 0.07

    def clean_action(self, env) -> np.ndarray:
        ee, cube, gripper = env.ee_pos, env.cube_pos, env.gripper
        step = env.ee_step
        grasp = cube + self.grasp_offset
        d_xy = np.linalg.norm(grasp[:2] - ee[:2])
        d_z = ee[2] - grasp[2]
        near = d_xy < 2 * XY_TOL and abs(d_z) < 2 * GRASP_TOL
        lifted_z = env.cube_rest_z + LIFT_TARGET

        if near and HOLD_MIN < gripper < HOLD_MAX:          # holding: lift
            target, grip = np.array([ee[0], ee[1], lifted_z]), 1.0
        elif near and gripper <= HOLD_MIN and d_xy < XY_TOL and abs(d_z) < GRASP_TOL:
            target, grip = ee, 1.0                            # in place: close
        elif gripper > 0.1 and not near:                      # closed on nothing: open, back off
            target, grip = np.array([ee[0], ee[1], grasp[2] + self.hover]), -1.0
        elif d_xy < XY_TOL:                                   # aligned: descend
            target, grip = grasp, -1.0
        else:                                                 # approach at hover height
            hover_z = grasp[2] + self.hover
            low = ee[2] < grasp[2] + 0.5 * self.hover         # rise before moving sideways
            xy = ee[:2] if low else grasp[:2]
            target, grip = np.array([xy[0], xy[1], hover_z]), -1.0
        delta = np.clip((target - ee) / step, -1, 1) * self.speed
        return np.concatenate([delta, [grip]])

    def progress(self, env) -> float:
        """Negative distance to the cube until it is lifted, then its height above rest."""
        lift = env.cube_pos[2] - env.cube_rest_z
        return float(-np.linalg.norm(env.cube_pos - env.ee_pos) + 10 * max(lift, 0.0))
