"""The PushT physics world (pymunk 7), with Diffusion Policy's exact definitions.

Kept apart from the gymnasium env so that the scripted expert can build worlds and roll them out
without observations, rendering or reward bookkeeping. Units are pixels, seconds and radians; y points
down as in pygame.
"""

import copy
import math

import numpy as np
import pygame
import pymunk
import shapely.geometry as sg

WINDOW_SIZE = 512
# DP's segments, endpoint order included: it changes contact normals and float rounding
WALLS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))
WALL_RADIUS = 2
AGENT_RADIUS = 15
AGENT_START = (256, 400)  # placeholder pose before the seeded state is set
BLOCK_START = (256, 300)
BLOCK_MASS = 1
TEE_SCALE = 30
TEE_LENGTH = 4
GOAL_POSE = (256.0, 256.0, math.pi / 4)
GOAL_BODY_BOX = (50, 100)  # DP's goal body uses a box moment; it only needs a valid body
SIM_HZ = 100
CONTROL_HZ = 10
K_P, K_V = 100, 20  # critically damped PD on the agent's velocity
SUCCESS_THRESHOLD = 0.95

COLORS = {
    "wall": tuple(pygame.Color("LightGray")),
    "agent": tuple(pygame.Color("RoyalBlue")),
    "block": tuple(pygame.Color("LightSlateGray")),
    "goal": tuple(pygame.Color("LightGreen")),
}


def tee_vertices() -> tuple[list, list]:
    """Local vertices of the bar and the stem (origin = middle of the bar's outer edge)."""
    half = TEE_LENGTH * TEE_SCALE / 2
    bar = [(-half, TEE_SCALE), (half, TEE_SCALE), (half, 0), (-half, 0)]
    w = TEE_SCALE / 2
    stem = [(-w, TEE_SCALE), (-w, TEE_LENGTH * TEE_SCALE), (w, TEE_LENGTH * TEE_SCALE), (w, TEE_SCALE)]
    return bar, stem


def add_tee(space: pymunk.Space, position, angle: float) -> pymunk.Body:
    """Add DP's T block to `space` and return its body.

    Two DP quirks are definitions, kept on purpose: the moment is twice the bar's moment (DP
    computes the stem's moment from the bar's vertices), and the centre of gravity is the plain
    mean of the two shape centroids, (0, 45), not the area-weighted (0, 40.7).
    """
    bar, stem = tee_vertices()
    moment = 2 * pymunk.moment_for_poly(BLOCK_MASS, vertices=bar)
    body = pymunk.Body(BLOCK_MASS, moment)
    shapes = [pymunk.Poly(body, bar), pymunk.Poly(body, stem)]
    for shape in shapes:
        shape.color = COLORS["block"]
    body.center_of_gravity = (shapes[0].center_of_gravity + shapes[1].center_of_gravity) / 2
    body.position = position
    body.angle = angle
    space.add(body, *shapes)
    return body


def _add_agent(space: pymunk.Space) -> pymunk.Body:
    # Kinematic: infinite mass, moved only by our PD velocity; it passes through static walls.
    body = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
    body.position = AGENT_START
    shape = pymunk.Circle(body, AGENT_RADIUS)
    shape.color = COLORS["agent"]
    space.add(body, shape)
    return body


def _add_walls(space: pymunk.Space) -> None:
    walls = [pymunk.Segment(space.static_body, a, b, WALL_RADIUS) for a, b in WALLS]
    for wall in walls:
        wall.color = COLORS["wall"]
    space.add(*walls)


def _count_contacts(arbiter: pymunk.Arbiter, space: pymunk.Space, counter: dict) -> None:
    counter["points"] += len(arbiter.contact_point_set.points)


def body_polygons(body: pymunk.Body) -> list[list]:
    """World vertices of the T's two polygons placed at `body`'s pose (bar first)."""
    return [[body.local_to_world(v) for v in verts] for verts in tee_vertices()]


def goal_body() -> pymunk.Body:
    body = pymunk.Body(BLOCK_MASS, pymunk.moment_for_box(BLOCK_MASS, GOAL_BODY_BOX))
    # position before angle, as DP; the goal body's CoG is its origin so the order is moot
    body.position = GOAL_POSE[:2]
    body.angle = GOAL_POSE[2]
    return body


GOAL_GEOM = sg.MultiPolygon([sg.Polygon(p) for p in body_polygons(goal_body())])


class PushTSim:
    """One PushT world: walls, the kinematic agent and the T block.

    `state` is (5,) float64: agent x, y, block x, y, block angle (raw, not wrapped).
    """

    def __init__(self):
        self.space = pymunk.Space()
        self.space.gravity = 0, 0
        # damping 0: bodies keep no velocity between steps, so pushing is quasi-static
        self.space.damping = 0
        _add_walls(self.space)
        self.agent = _add_agent(self.space)
        self.block = add_tee(self.space, BLOCK_START, 0.0)
        # Every shape has collision type 0, so (0, 0) sees all pairs, block-wall included.
        self.contacts = {"points": 0}
        self.space.on_collision(0, 0, post_solve=_count_contacts, data=self.contacts)

    def set_state(self, state, legacy: bool = False) -> None:
        """Place agent and block, then run one physics step without PD, as DP's `_set_state`.

        legacy=True sets the block position before the angle; chipmunk rotates about the centre
        of gravity, so the block origin then moves away from the requested xy (DP's old data).
        """
        state = [float(v) for v in state]
        self.contacts["points"] = 0
        self.agent.position = state[:2]
        if legacy:
            self.block.position = state[2:4]
            self.block.angle = state[4]
        else:
            self.block.angle = state[4]
            self.block.position = state[2:4]
        self.space.step(1.0 / SIM_HZ)

    def step(self, action) -> int:
        """Drive the agent toward `action` (2,) for one control period; return n_contacts.

        n_contacts is DP's `ceil(contact points over the substeps / substeps)`.
        """
        dt = 1.0 / SIM_HZ
        n_sub = SIM_HZ // CONTROL_HZ
        self.contacts["points"] = 0
        ax, ay = float(action[0]), float(action[1])
        for _ in range(n_sub):
            (px, py), (vx, vy) = self.agent.position, self.agent.velocity
            # same float operations, in the same order, as DP's Vec2d expression
            acc_x = K_P * (ax - px) + K_V * (0 - vx)
            acc_y = K_P * (ay - py) + K_V * (0 - vy)
            self.agent.velocity = (vx + acc_x * dt, vy + acc_y * dt)
            self.space.step(dt)
        return self.n_contacts()

    def n_contacts(self) -> int:
        """Contact points counted since the last `step` began, per substep, rounded up (DP)."""
        return math.ceil(self.contacts["points"] / (SIM_HZ // CONTROL_HZ))

    @property
    def state(self) -> np.ndarray:
        """(5,) float64 agent xy, block xy, raw block angle."""
        return np.array([*self.agent.position, *self.block.position, self.block.angle])

    @property
    def block_pose(self) -> np.ndarray:
        """(3,) float64 block x, y, raw angle."""
        return np.array([*self.block.position, self.block.angle])

    def coverage(self) -> float:
        """area(goal ∩ block) / area(goal), with shapely, as DP."""
        block = sg.MultiPolygon([sg.Polygon(p) for p in body_polygons(self.block)])
        return GOAL_GEOM.intersection(block).area / GOAL_GEOM.area

    def clone(self) -> "PushTSim":
        """A deep copy, contact caches included.

        It continues exactly like this world in free motion, but not bit-exactly through
        contacts: chipmunk's broadphase tree is rebuilt, so contact pairs may be solved in a
        different order. pymunk's pickling also restores a body's position before its centre
        of gravity, leaving chipmunk's internal CoG position stale (the block would jump by
        R(theta)(0, 45) on the next step); setting the pose again rebuilds it.
        """
        other = copy.deepcopy(self)
        other.block.angle = self.block.angle
        other.block.position = self.block.position
        return other
