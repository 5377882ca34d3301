"""Pick-cube env speed: gym-hil's control step against `FastOpspace`, side by side in one run.

    python bench/env_speed.py [--seconds 30] [--rounds 6] [--image_size 96]
                              [--out <json>]   (default: <bench root>/results/env_speed.json)

Variants (one env each, built once, so renderer set-up is not timed):
  gym-hil   PickCubeEnv(fast_control=False): gym-hil's `step` (Python opspace per 2 ms substep)
  fast      PickCubeEnv(fast_control=True): `FastOpspace`, bit-identical dynamics
each state-only and with both 96x96 cameras (front, wrist). Every variant replays the same
seeded random actions (resets at termination or after 100 steps, not timed), so the variants
visit the same states. The time budget is split into `--rounds` rounds that visit the variants
in turn: on a shared machine, load changes hit every variant alike. Reported: env steps/s
(0.1 s of simulated time each) per wall second and per second of the process's CPU time (what
an uncontended core would give), the fast/gym-hil ratio, `os.getloadavg()` before and after.

Also a per-substep profile on one state: microseconds of `mj_step`, of gym-hil's `opspace` and
of `FastOpspace.torque`; and "physics only", the steps/s if control were free (50 `mj_step`s).
Prints a table last, writes JSON.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import timeit
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._paths import add_out_argument, write_json
from policylab.envs.pick_cube import PickCubeEnv

EPISODE_STEPS = 100  # gym-hil's limit (MultiStepWrapper's in training)
VARIANTS = {"gym-hil": False, "fast": True}


class Runner:
    """One env stepping through a fixed seeded random-action stream, timing only `step`."""

    def __init__(self, image_obs: bool, fast: bool, image_size: int, seed: int = 0):
        self.env = PickCubeEnv(image_obs=image_obs, image_size=image_size, fast_control=fast)
        self.rng = np.random.default_rng(seed)
        self.episode, self.t = 0, 0
        self.env.reset(seed=self.episode)
        self.env.step(np.zeros(4))  # lazy renderer set-up outside the timing
        self.rounds: list[tuple[int, float, float]] = []  # (steps, wall s, process CPU s)

    def run(self, seconds: float) -> float:
        """Step for about `seconds` of wall time; returns this round's steps per wall second."""
        steps, spent, cpu = 0, 0.0, 0.0
        while spent < seconds:
            action = self.rng.uniform(-1, 1, 4)
            start, start_cpu = time.perf_counter(), time.process_time()
            _, _, terminated, _, _ = self.env.step(action)
            spent += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
            steps += 1
            self.t += 1
            if terminated or self.t >= EPISODE_STEPS:
                self.episode += 1
                self.t = 0
                self.env.reset(seed=self.episode)
        self.rounds.append((steps, spent, cpu))
        return steps / spent

    def summary(self) -> dict:
        steps, wall, cpu = (sum(r[i] for r in self.rounds) for i in range(3))
        per_round = [n / s for n, s, _ in self.rounds]
        return {"steps": steps, "seconds": wall, "cpu_seconds": cpu, "steps_per_s": steps / wall,
                "steps_per_cpu_s": steps / cpu, "round_steps_per_s": per_round}


def substep_profile(repeats: int = 2000) -> dict:
    """Microseconds per 2 ms substep on one mid-reach state (best of 5 repeats)."""
    import mujoco  # after policylab.envs.pick_cube, which picks the headless GL backend

    opspace = importlib.import_module("gym_hil.controllers.opspace").opspace
    env = PickCubeEnv()
    try:
        env.reset(seed=0)
        for _ in range(5):
            env.step(np.array([0.5, 0.3, -0.5, 0.0]))
        sim, fast = env.sim, env._control
        m, d = sim.model, sim.data
        x_des, quat_des = d.mocap_pos[0].tolist(), d.mocap_quat[0].tolist()

        def best(fn, n=repeats):
            return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6

        def step_copy():  # mj_step on a copy, so the profiled state stays put
            mujoco.mj_step(m, scratch)

        scratch = mujoco.MjData(m)
        state_spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        state = np.empty(mujoco.mj_stateSize(m, state_spec))
        mujoco.mj_getState(m, d, state, state_spec)

        def reset_scratch():
            mujoco.mj_setState(m, scratch, state, state_spec)
            mujoco.mj_forward(m, scratch)

        reset_scratch()
        mj_step_us = best(lambda: (reset_scratch(), step_copy())) - best(reset_scratch)
        return {
            "mj_step_us": mj_step_us,
            "gym_hil_opspace_us": best(lambda: opspace(
                model=m, data=d, site_id=sim._pinch_site_id, dof_ids=sim._panda_dof_ids,
                pos=d.mocap_pos[0], ori=d.mocap_quat[0], joint=sim._home_position,
                gravity_comp=True)),
            "fast_torque_us": best(lambda: fast.torque(x_des, quat_des)),
            "substeps": int(sim._n_substeps),
        }
    finally:
        env.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per variant")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--image_size", type=int, default=96)
    add_out_argument(parser, "env_speed")  # a relative --out is relative to the checkout
    return parser


def main():
    args = build_parser().parse_args()

    load_start = os.getloadavg()
    runners = {(obs, name): Runner(obs == "image", fast, args.image_size)
               for obs in ("state", "image") for name, fast in VARIANTS.items()}
    try:
        for r in range(args.rounds):
            rates = {key: runner.run(args.seconds / args.rounds) for key, runner in runners.items()}
            print(f"round {r + 1}/{args.rounds} steps/s (load {os.getloadavg()[0]:.2f}): " + ", ".join(
                f"{obs}/{name} {rate:.1f}" for (obs, name), rate in rates.items()), flush=True)
    finally:
        for runner in runners.values():
            runner.env.close()
    profile = substep_profile()
    load_end = os.getloadavg()

    rows = [{"obs": obs, "variant": name, **run.summary()} for (obs, name), run in runners.items()]
    speed = {(r["obs"], r["variant"]): r["steps_per_s"] for r in rows}
    cpu_speed = {(r["obs"], r["variant"]): r["steps_per_cpu_s"] for r in rows}
    ratios = {obs: speed[(obs, "fast")] / speed[(obs, "gym-hil")] for obs in ("state", "image")}
    physics_only = 1e6 / (profile["mj_step_us"] * profile["substeps"])
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"},
              "cpu_count": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": load_end,
              "rows": rows, "fast_over_gym_hil": ratios, "substep_profile_us": profile,
              "physics_only_steps_per_s": physics_only}
    write_json(REPO / args.out, result)

    load = lambda x: " ".join(f"{v:.2f}" for v in x)
    print(f"\nloadavg (1, 5, 15 min): start {load(load_start)}, end {load(load_end)}; "
          f"{os.cpu_count()} cpus")
    print(f"per 2 ms substep: mj_step {profile['mj_step_us']:.1f} us, gym-hil opspace "
          f"{profile['gym_hil_opspace_us']:.1f} us, FastOpspace.torque "
          f"{profile['fast_torque_us']:.1f} us; physics only (control free): {physics_only:.0f} steps/s")
    print("(st/s: steps per wall second; st/cpu-s: per second of this process's CPU time, "
          "what one uncontended core would give)")
    print(f"\n{'obs':8s} {'gym-hil st/s':>13s} {'fast st/s':>10s} {'fast/gym-hil':>13s} "
          f"{'gym-hil st/cpu-s':>17s} {'fast st/cpu-s':>14s}")
    for obs in ("state", "image"):
        print(f"{obs:8s} {speed[(obs, 'gym-hil')]:13.1f} {speed[(obs, 'fast')]:10.1f} "
              f"{ratios[obs]:12.2f}x {cpu_speed[(obs, 'gym-hil')]:17.1f} "
              f"{cpu_speed[(obs, 'fast')]:14.1f}")


if __name__ == "__main__":
    main()
