"""What every demo generator shares: the store and its seeds, `n` and `mode`, the attempt loop, the report.

`n` and `mode` (the same in every generator):

    mode=top_up (default)  n is the number of episodes the store should hold; a rerun of the same
                           command adds only what is missing (nothing, when it is complete)
    mode=append            add n episodes to whatever the store holds

Either way, seeds already in the store (`meta/episode_seeds`) are skipped, and each episode lands
with its seed in one commit (`ReplayBuffer.add_episode(episode_meta=...)`): a generator killed at
any moment leaves a store that the next run appends to.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import tqdm

from policylab.data.replay_buffer import ReplayBuffer, ReplayBufferError

SEEDS_KEY = "episode_seeds"
MODES = ("top_up", "append")
MODE_HELP = ("n / mode: mode=top_up (default): n is the total number of episodes the store should hold, "
             "so rerunning a command only adds what is missing; mode=append: add n more episodes")


def wants_help(argv: list[str], doc: str) -> bool:
    """Print `doc` and return True when argv asks for help (-h / --help)."""
    if not any(a in ("-h", "--help") for a in argv):
        return False
    print(doc.strip())
    print(f"\n{MODE_HELP}")
    return True


def open_demo_store(out) -> tuple[ReplayBuffer, set[int]]:
    """The store at `out` opened for appending, and the seeds of its episodes.

    Refuses (SystemExit naming the store) a store whose episodes have no seeds: new seeds could
    repeat the old episodes' ones.
    """
    buffer = ReplayBuffer.create_from_path(out, mode="a")
    try:
        if SEEDS_KEY not in buffer.meta and buffer.n_episodes:
            raise ReplayBufferError(f"{buffer.n_episodes} episodes but no meta/{SEEDS_KEY}")
        seeds = buffer.episode_meta(SEEDS_KEY) if SEEDS_KEY in buffer.meta else []
    except ReplayBufferError as err:
        buffer.close()
        raise SystemExit(f"{out}: {err}; refusing to append (a new episode's seed could repeat an old one). "
                         f"`python -m policylab.data.repair {out} fix=fill` marks unknown seeds -1") from None
    return buffer, {int(s) for s in seeds}


def episodes_to_add(n: int, mode: str, have: int) -> int:
    """How many episodes a run with `n` and `mode` adds to a store holding `have`."""
    if mode == "top_up":
        return max(n - have, 0)
    if mode == "append":
        return n
    raise SystemExit(f"mode={mode!r}: use one of {MODES}. {MODE_HELP}")


def collect(buffer: ReplayBuffer, make_episode: Callable[[int], dict | None], add: Callable[[dict, int], None],
            first_seed: int, n: int, max_attempts: int | None, done_seeds: set[int], desc: str) -> dict:
    """Try seeds first_seed, first_seed + 1, ... (skipping `done_seeds`) until `n` episodes were added
    or `max_attempts` (default 2n + 10) were tried. `make_episode(seed)` returns an episode or None
    (failed); `add(episode, seed)` commits it. Returns counts, success rate and speed."""
    max_attempts = max_attempts or 2 * n + 10
    n_ok = n_tried = n_steps = 0
    seed, start = first_seed, time.perf_counter()
    with tqdm.tqdm(total=n, desc=desc) as pbar:
        while n_ok < n and n_tried < max_attempts:
            if seed not in done_seeds:
                episode = make_episode(seed)
                n_tried += 1
                if episode is not None:
                    add(episode, seed)
                    n_ok, n_steps = n_ok + 1, n_steps + len(episode["action"])
                    pbar.update(1)
                pbar.set_postfix(success=f"{n_ok}/{n_tried}")
            seed += 1
    minutes = (time.perf_counter() - start) / 60
    return {"wanted": n, "saved": n_ok, "attempts": n_tried, "success_rate": n_ok / max(n_tried, 1),
            "episodes_per_minute": n_tried / max(minutes, 1e-9), "saved_steps": n_steps,
            "n_episodes": buffer.n_episodes, "n_steps": buffer.n_steps}


def seed_row(seed: int) -> dict[str, np.ndarray]:
    """The per-episode meta an episode is committed with."""
    return {SEEDS_KEY: np.int64(seed)}


def report(stats: dict, out) -> None:
    """Print what a run did; SystemExit (non-zero) when fewer episodes than wanted were made."""
    print(f"saved {stats['saved']} episodes to {out} "
          f"({stats['n_episodes']} episodes, {stats['n_steps']} steps in the store)", file=sys.stdout)
    if stats["attempts"]:
        print(f"expert success rate: {stats['success_rate']:.3f} ({stats['saved']}/{stats['attempts']} attempts)")
        print(f"episodes/minute: {stats['episodes_per_minute']:.1f}")
    else:
        print("the store already holds the episodes asked for (mode=top_up): nothing to add")
    if stats["saved"] < stats["wanted"]:
        raise SystemExit(f"only {stats['saved']} of {stats['wanted']} episodes after {stats['attempts']} attempts")
