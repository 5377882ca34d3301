"""Generate PushT expert demonstrations into a zarr ReplayBuffer with Diffusion Policy's keys.

    python -m policylab.data.generate.pusht n=100 out=data/pusht_expert.zarr seed=0

Options (key=value): n (episodes the store should hold; with mode=append, episodes to add),
out (store path; appended to if it exists), mode (top_up, the default, or append), seed
(first seed; episode seeds go up by one per attempt), images (false: no `img`,
for state tasks, twice as fast), legacy (DP's state-setting order, false
like DP's demo_pusht.py), max_steps (300), render_size (96), max_attempts (default 2 * (episodes
to add) + 10).

Each attempt runs the scripted expert on one seed; episodes that do not reach coverage > 0.95
within max_steps are discarded. Seeds already in the store (`meta/episode_seeds`) are skipped,
so re-running a command only adds what is missing; each episode is committed with its seed.

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

import numpy as np

from policylab.common.overrides import MISSING, parse_overrides
from policylab.data.generate.common import (
    SEEDS_KEY,
    collect,
    episodes_to_add,
    open_demo_store,
    report,
    seed_row,
    wants_help,
)

__all__ = ["SEEDS_KEY", "GenerateConfig", "generate", "main", "parse_args", "run", "run_episode"]


@dataclasses.dataclass
class GenerateConfig:
    n: int = MISSING      # episodes the store should hold (mode=top_up) or to add (mode=append)
    out: str = MISSING
    mode: str = "top_up"  # top_up | append (policylab.data.generate.common)
    seed: int = 0
    legacy: bool = False
    max_steps: int = 300
    render_size: int = 96
    max_attempts: int | None = None
    images: bool = True  # false: no `img` array (state tasks only; half the time)


def parse_args(argv: list[str]) -> GenerateConfig:
    """`key=value` arguments (Hydra's syntax) -> GenerateConfig; unknown or missing keys exit naming them."""
    return parse_overrides(GenerateConfig, argv, prog="policylab.data.generate.pusht")


def run_episode(env, expert, seed: int, max_steps: int, images: bool = True) -> dict | None:
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
    """Add episodes to cfg.out (`common.py`: n, mode); returns counts, success rate and speed."""
    buffer, done_seeds = open_demo_store(cfg.out)
    n = episodes_to_add(cfg.n, cfg.mode, buffer.n_episodes)
    try:
        env, expert = _env_and_expert(cfg) if n else (None, None)
        stats = collect(buffer, lambda seed: run_episode(env, expert, seed, cfg.max_steps, cfg.images),
                        lambda episode, seed: buffer.add_episode(episode, compressors="disk",
                                                                 episode_meta=seed_row(seed)),
                        cfg.seed, n, cfg.max_attempts, done_seeds, "PushT expert episodes")
    finally:
        buffer.close()
    return {"out": str(cfg.out), **stats}


def _env_and_expert(cfg: GenerateConfig):
    # imported here: `--help` and the other tasks' generators work without the pusht extra
    try:
        from policylab.envs.pusht.env import PushTEnv
        from policylab.envs.pusht.expert import PushTExpert
    except ImportError as err:
        raise SystemExit(f"PushT demos need the pusht extra: pip install 'policylab[pusht]' ({err})") from None
    env = PushTEnv(obs_type="keypoints", legacy=cfg.legacy, render_size=cfg.render_size, render_action=False)
    return env, PushTExpert()


def run(argv: list[str]) -> dict:
    """Parse `key=value` arguments, generate, print the report; the stats (SystemExit on failure)."""
    cfg = parse_args(argv)
    stats = generate(cfg)
    report(stats, cfg.out)
    return stats


def main(argv: list[str] | None = None) -> int:
    """Console entry: exit code 0 after success (failures raise SystemExit with a message)."""
    argv = sys.argv[1:] if argv is None else argv
    if not wants_help(argv, __doc__):
        run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
