"""Generate PushT expert demonstrations into a zarr ReplayBuffer with Diffusion Policy's keys.

    python -m policylab.data.generate.pusht n=100 out=data/pusht_expert.zarr seed=0

Options (key=value): n (episodes to save), out (store path; appended to if it exists), seed
(first seed; episode seeds go up by one per attempt), images (false: no `img`,
for state tasks, twice as fast), legacy (DP's state-setting order, false
like DP's demo_pusht.py), max_steps (300), render_size (96), max_attempts (default 2n + 10).

Each attempt runs the scripted expert on one seed; episodes that do not reach coverage > 0.95
within max_steps are discarded. Seeds already in the store (`meta/episode_seeds`) are skipped,
so re-running a command only adds what is missing.

Per step, as DP's demo_pusht.py records (the observation *before* the step's action):
    img         (N, S, S, 3) uint8   render without the action cross. DP's demo script writes
                                     uint8; its published file holds float32 0..255; loaders
                                     divide by 255 either way, and uint8 is 4x smaller.
    state       (N, 5) float32       agent x, y, block x, y, raw block angle
    keypoint    (N, 9, 2) float32    world block keypoints
    action      (N, 2) float32       agent target
    n_contacts  (N, 1) float32       contacts of the step that led to this observation
"""

import dataclasses
import sys
import time

import numpy as np
import tqdm

from policylab.common.overrides import MISSING, parse_overrides
from policylab.data.replay_buffer import ReplayBuffer
from policylab.envs.pusht.env import PushTEnv
from policylab.envs.pusht.expert import PushTExpert

SEEDS_KEY = "episode_seeds"


@dataclasses.dataclass
class GenerateConfig:
    n: int = MISSING
    out: str = MISSING
    seed: int = 0
    legacy: bool = False
    max_steps: int = 300
    render_size: int = 96
    max_attempts: int | None = None
    images: bool = True  # false: no `img` array (state tasks only; half the time)


def parse_args(argv: list[str]) -> GenerateConfig:
    """`key=value` arguments (Hydra's syntax) -> GenerateConfig; unknown or missing keys exit naming them."""
    return parse_overrides(GenerateConfig, argv, prog="policylab.data.generate.pusht")


def run_episode(env: PushTEnv, expert: PushTExpert, seed: int, max_steps: int, images: bool = True) -> dict | None:
    """One expert episode; the recorded steps {key: (L, ...)} if it succeeded, else None."""
    _, info = env.reset(seed=seed)
    expert.reset()
    steps = []
    for _ in range(max_steps):
        action = expert.act(env.sim)
        steps.append({
            **({"img": env.render()} if images else {}),
            "state": env.get_state().astype(np.float32),
            "keypoint": env.get_keypoints().astype(np.float32),
            "action": action.astype(np.float32),
            "n_contacts": np.array([info["n_contacts"]], dtype=np.float32),
        })
        _, _, terminated, _, info = env.step(action)
        if terminated:
            return {key: np.stack([s[key] for s in steps]) for key in steps[0]}
    return None


def generate(cfg: GenerateConfig) -> dict:
    """Write cfg.n successful episodes to cfg.out; returns counts, success rate and speed."""
    buffer = ReplayBuffer.create_from_path(cfg.out, mode="a")
    done_seeds = list(np.asarray(buffer.meta[SEEDS_KEY][:])) if SEEDS_KEY in buffer.meta else []
    if len(done_seeds) != buffer.n_episodes:
        raise SystemExit(f"{cfg.out}: {buffer.n_episodes} episodes but {len(done_seeds)} seeds "
                         f"in meta/{SEEDS_KEY}; refusing to append")
    env = PushTEnv(obs_type="keypoints", legacy=cfg.legacy, render_size=cfg.render_size,
                   render_action=False)
    expert = PushTExpert()
    max_attempts = cfg.max_attempts or 2 * cfg.n + 10
    n_ok = n_tried = 0
    seed = cfg.seed
    start = time.perf_counter()
    with tqdm.tqdm(total=cfg.n, desc="PushT expert episodes") as pbar:
        while n_ok < cfg.n and n_tried < max_attempts:
            if seed not in done_seeds:
                episode = run_episode(env, expert, seed, cfg.max_steps, cfg.images)
                n_tried += 1
                if episode is not None:
                    buffer.add_episode(episode, compressors="disk")
                    done_seeds.append(seed)
                    buffer.update_meta({SEEDS_KEY: np.array(done_seeds, dtype=np.int64)})
                    n_ok += 1
                    pbar.update(1)
                pbar.set_postfix(success=f"{n_ok}/{n_tried}")
            seed += 1
    minutes = (time.perf_counter() - start) / 60
    return {"saved": n_ok, "attempts": n_tried, "success_rate": n_ok / max(n_tried, 1),
            "episodes_per_minute": n_tried / max(minutes, 1e-9), "n_episodes": buffer.n_episodes,
            "n_steps": buffer.n_steps}


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    stats = generate(cfg)
    print(f"saved {stats['saved']} episodes to {cfg.out} "
          f"({stats['n_episodes']} episodes, {stats['n_steps']} steps in the store)")
    print(f"expert success rate: {stats['success_rate']:.3f} "
          f"({stats['saved']}/{stats['attempts']} attempts)")
    print(f"episodes/minute: {stats['episodes_per_minute']:.1f}")
    if stats["saved"] < cfg.n:
        raise SystemExit(f"only {stats['saved']} of {cfg.n} episodes after {stats['attempts']} attempts")


if __name__ == "__main__":
    main()
