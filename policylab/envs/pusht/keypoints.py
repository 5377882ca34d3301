"""DP's 9 block keypoints, rebuilt the way DP builds them (`PymunkKeypointManager`).

DP rasterises the T alone at pose (256, 300, 0), takes every non-background pixel in block-local
coordinates, runs farthest-point sampling from a random start drawn with `default_rng(0)`, and
adds a `uniform(0, 1)` shift from the same generator. The result depends on the exact pixels of
the outline, which is why the drawing lives in `render.py` and is pixel-exact.
"""

import functools

import numpy as np
import pymunk

from policylab.envs.pusht import render
from policylab.envs.pusht.sim import add_tee

N_BLOCK_KEYPOINTS = 9
KEYPOINT_SEED = 0
RASTER_POSE = (256, 300)  # where DP draws the T to rasterise it (angle 0)


def farthest_point_sampling(points: np.ndarray, n_points: int, init_idx: int) -> np.ndarray:
    """Greedy farthest-point sampling; ties go to the lowest index, as `np.argmax`.

    Args:
        points: (P, 2) candidate points.
        n_points: K, number of points to pick.
        init_idx: index of the first pick.
    Returns:
        (K, 2) picked points, in pick order.
    """
    picked = [points[init_idx]]
    min_dist = np.full(len(points), np.inf)
    for _ in range(n_points - 1):
        diff = points - picked[-1]
        min_dist = np.minimum(min_dist, np.sqrt((diff * diff).sum(axis=-1)))
        picked.append(points[np.argmax(min_dist)])
    return np.array(picked)


@functools.cache
def block_local_keypoints() -> np.ndarray:
    """(9, 2) float64 keypoints in the block's local frame (origin = block_xy, pixels)."""
    space = pymunk.Space()
    block = add_tee(space, RASTER_POSE, 0.0)
    canvas = render.draw_space(space)
    mask = (canvas != np.array(render.BACKGROUND, dtype=np.uint8)).any(axis=-1)
    ys, xs = np.nonzero(mask)  # row-major, the order DP's boolean indexing gives
    # With angle 0 the image->local transform is a pure translation, so this is exact.
    local = np.stack([xs, ys], axis=-1).astype(np.float64) - np.array(block.position)
    rng = np.random.default_rng(KEYPOINT_SEED)
    init_idx = rng.choice(len(local))
    kps = farthest_point_sampling(local, N_BLOCK_KEYPOINTS, init_idx)
    kps = kps + rng.uniform(0, 1, size=kps.shape)
    kps.setflags(write=False)
    return kps


def keypoints_world(local: np.ndarray, pose) -> np.ndarray:
    """Block-local keypoints -> world: `R(theta) @ kp + xy`.

    Args:
        local: (K, 2) local keypoints.
        pose: (3,) block x, y, angle (raw, any range).
    Returns:
        (K, 2) world keypoints.
    """
    c, s = np.cos(pose[2]), np.sin(pose[2])
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + np.asarray(pose[:2], dtype=np.float64)
