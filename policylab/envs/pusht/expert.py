"""A scripted PushT expert: greedy pushing primitives, scored by rolling out the simulator.

Each decision:
1. Candidate contacts are sampled along the T's outline; each one defines a standoff point
   (contact + outward normal * (agent radius + gap)) and a push along the inward normal.
2. A travel path to the standoff point goes around the block (along its inflated convex hull)
   unless the straight line is clear.
3. Every candidate (travel, then up to `max_push_steps` push steps) is rolled out in a copy of
   the world; after each push step the pose error is measured.
4. The (candidate, push length) with the best rate of progress, `-Δlog(pose error) / steps`, is
   executed open loop; then we plan again from the real state.

The pose error is the mean squared distance of the T's 8 outline corners to the goal corners,
in px^2; it mixes translation and rotation at the scale of the block, like coverage does.
Zero friction makes pushing forces act along contact normals only, so pushing along an edge's
normal is the natural primitive; the simulator takes care of everything else (multi-contact,
walls, the agent's PD lag).
"""

import dataclasses
import itertools
import math

import numpy as np
import shapely.geometry as sg

from policylab.envs.pusht import sim as S

MIN_ERROR = 1e-6  # px^2; keeps log(error) finite for a perfect placement


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    """Planner knobs, in px and control steps (the defaults solve 100/100 of seeds 0..99)."""

    gap: float = 3.0  # clearance between agent and block at the standoff point
    clearance: float = 8.0  # extra margin around the block's hull on travel paths
    keepout_tolerance: float = 1.0  # straight travel may pass this much closer than `gap`
    ring_spacing: float = 20.0  # spacing of waypoints along the hull when going around
    travel_step: float = 45.0  # max target displacement per control step when travelling
    contact_spacing: float = 20.0  # spacing of candidate contacts along an edge
    push_steps_px: tuple = (3.0, 10.0)  # target displacement per push step (fine, coarse)
    coarse_error: float = 100.0  # pose error (px^2) above which coarse pushes are also tried
    max_push_steps: int = 8
    settle_steps: int = 1  # hold the standoff point before pushing, to shed travel speed


def _outline_local() -> np.ndarray:
    """(8, 2) corners of the T's outline in block-local px, counter-clockwise on screen."""
    bar, stem = S.tee_vertices()
    (bl, _), (br, _) = bar[0], bar[1]  # x extents of the bar
    top, mid = 0.0, float(S.TEE_SCALE)
    sx, bot = stem[3][0], stem[1][1]
    return np.array([
        (bl, top), (br, top), (br, mid), (sx, mid), (sx, bot), (-sx, bot), (-sx, mid), (bl, mid)
    ], dtype=np.float64)


OUTLINE = _outline_local()


def _outward_normals(poly: np.ndarray) -> np.ndarray:
    """(V, 2) unit outward normals of the edges poly[i] -> poly[i+1]."""
    edges = np.roll(poly, -1, axis=0) - poly
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    x, y = poly[:, 0], poly[:, 1]
    signed_area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    return normals if signed_area > 0 else -normals


NORMALS = _outward_normals(OUTLINE)


def _to_world(points: np.ndarray, pose) -> np.ndarray:
    """(P, 2) local points -> world: R(theta) p + xy."""
    c, s = math.cos(pose[2]), math.sin(pose[2])
    return points @ np.array([[c, s], [-s, c]]) + np.asarray(pose[:2])


GOAL_CORNERS = _to_world(OUTLINE, S.GOAL_POSE)


def pose_error(pose) -> float:
    """Mean squared distance (px^2) of the outline corners at `pose` (3,) to the goal's."""
    d = _to_world(OUTLINE, pose) - GOAL_CORNERS
    return float(np.mean(np.sum(d * d, axis=-1)))


def _contacts(pose, spacing: float):
    """Candidate contacts on the outline: world points and world outward normals.

    Returns:
        points (C, 2), normals (C, 2).
    """
    pts, nrm = [], []
    for i in range(len(OUTLINE)):
        a, b = OUTLINE[i], OUTLINE[(i + 1) % len(OUTLINE)]
        n_pts = max(1, int(np.linalg.norm(b - a) // spacing))
        for t in (np.arange(n_pts) + 0.5) / n_pts:
            pts.append(a + t * (b - a))
            nrm.append(NORMALS[i])
    return _to_world(np.array(pts), pose), _to_world(np.array(nrm), (0.0, 0.0, pose[2]))


def _resample(points: list, step: float) -> list:
    """Targets along a polyline, no two consecutive ones farther apart than `step` px."""
    out = []
    for a, b in itertools.pairwise(points):
        a, b = np.asarray(a, float), np.asarray(b, float)
        n = max(1, math.ceil(np.linalg.norm(b - a) / step))
        out += [a + (b - a) * (k / n) for k in range(1, n + 1)]
    return out


def _in_action_space(targets: list) -> list:
    """Clip targets into the env's action box [0, 512]^2; paths around a block near a wall
    would leave it, and the data should not hold actions the env does not declare."""
    return [np.clip(t, 0, S.WINDOW_SIZE) for t in targets]


class _Geometry:
    """The block's shapes at one pose, for travel planning."""

    def __init__(self, pose, cfg: ExpertConfig):
        self.block = sg.Polygon(_to_world(OUTLINE, pose))
        # how far the agent's centre must stay from the block
        self.keepout = S.AGENT_RADIUS + cfg.gap - cfg.keepout_tolerance
        self.hull = self.block.convex_hull.buffer(S.AGENT_RADIUS + cfg.clearance)
        self.ring = self.hull.exterior
        self.ring_spacing = cfg.ring_spacing

    def clear(self, a, b) -> bool:
        return sg.LineString([a, b]).distance(self.block) >= self.keepout

    def exit_point(self, p, direction) -> np.ndarray:
        """First point along `direction` from p that is outside the inflated hull."""
        far = np.asarray(p) + direction * 2 * S.WINDOW_SIZE
        crossing = sg.LineString([p, far]).intersection(self.ring)
        if crossing.is_empty:
            return np.asarray(p, float)
        pts = [np.array(g.coords[0]) for g in getattr(crossing, "geoms", [crossing])]
        return min(pts, key=lambda q: np.linalg.norm(q - p))

    def around(self, a, b) -> list:
        """Points along the hull ring from the projection of a to that of b, shorter way."""
        length = self.ring.length
        da, db = self.ring.project(sg.Point(a)), self.ring.project(sg.Point(b))
        fwd = (db - da) % length
        sign, dist = (1, fwd) if fwd <= length / 2 else (-1, length - fwd)
        n = max(1, int(dist // self.ring_spacing))
        return [np.array(self.ring.interpolate((da + sign * dist * k / n) % length).coords[0])
                for k in range(n + 1)]


def travel_path(geo: _Geometry, agent, standoff, normal, cfg: ExpertConfig) -> list:
    """Targets taking the agent from `agent` to `standoff` without touching the block."""
    agent, standoff = np.asarray(agent, float), np.asarray(standoff, float)
    if geo.clear(agent, standoff):
        return _resample([agent, standoff], cfg.travel_step)
    entry = geo.exit_point(standoff, normal)
    start = agent
    if geo.hull.contains(sg.Point(agent)):
        # leave the hull straight away from the block's nearest point first
        boundary = geo.block.exterior
        near = np.array(boundary.interpolate(boundary.project(sg.Point(agent))).coords[0])
        away = agent - near
        norm = np.linalg.norm(away)
        away = away / norm if norm > 1e-9 else np.array([0.0, 1.0])
        start = geo.exit_point(agent, away)
    waypoints = [agent, start] + geo.around(start, entry) + [entry, standoff]
    return _resample(waypoints, cfg.travel_step)


@dataclasses.dataclass
class _Plan:
    actions: list
    rate: float


def _rollout(world: S.PushTSim, travel: list, push: list, err0: float):
    """Simulate travel + push targets; return the best (rate, n_actions) over push lengths."""
    for target in travel:
        world.step(target)
    best = (-math.inf, 0)
    n = len(travel)
    for k, target in enumerate(push, start=1):
        world.step(target)
        err = pose_error(world.block_pose)
        rate = (math.log(err0) - math.log(max(err, MIN_ERROR))) / (n + k)
        if rate > best[0]:
            best = (rate, n + k)
    return best


def _fresh_world(sim: S.PushTSim) -> S.PushTSim:
    """A new world at sim's pose and agent velocity (contact caches start empty)."""
    world = S.PushTSim()
    world.block.angle = sim.block.angle
    world.block.position = sim.block.position
    world.agent.position = sim.agent.position
    world.agent.velocity = sim.agent.velocity
    return world


def plan(sim: S.PushTSim, cfg: ExpertConfig) -> _Plan:
    """Best primitive from the current world state (does not modify `sim`)."""
    pose = sim.block_pose
    err0 = pose_error(pose)
    geo = _Geometry(pose, cfg)
    points, normals = _contacts(pose, cfg.contact_spacing)
    agent = np.array(sim.agent.position)
    push_px = cfg.push_steps_px if err0 > cfg.coarse_error else cfg.push_steps_px[:1]
    best = _Plan([], -math.inf)
    for point, normal in zip(points, normals):
        standoff = point + normal * (S.AGENT_RADIUS + cfg.gap)
        if sg.Point(standoff).distance(geo.block) < geo.keepout:
            continue  # in a concave corner the agent cannot reach this contact
        travel = travel_path(geo, agent, standoff, normal, cfg) + [standoff] * cfg.settle_steps
        travel = _in_action_space(travel)
        for step_px in push_px:
            push = _in_action_space([standoff - normal * (cfg.gap + step_px * k)
                                     for k in range(1, cfg.max_push_steps + 1)])
            rate, n = _rollout(_fresh_world(sim), travel, push, err0)
            if rate > best.rate:
                best = _Plan((travel + push)[:n], rate)
    return best


class PushTExpert:
    """Privileged scripted expert: reads the env's simulator, returns one action per call.

    Usage: `expert.reset()` at episode start, then `action = expert.act(env.sim)`.
    """

    def __init__(self, config: ExpertConfig | None = None):
        self.cfg = config or ExpertConfig()
        self._queue = []

    def reset(self) -> None:
        self._queue = []

    def act(self, sim: S.PushTSim) -> np.ndarray:
        """(2,) float64 agent target for the current state."""
        if not self._queue:
            self._queue = list(plan(sim, self.cfg).actions)
            if not self._queue:  # no primitive makes progress: hold still
                self._queue = [np.array(sim.agent.position)]
        return np.asarray(self._queue.pop(0), dtype=np.float64)
