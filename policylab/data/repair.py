"""Diagnose and repair a ReplayBuffer store that an interrupted or older writer left inconsistent.

    python -m policylab.data.repair <store>                  # report only; exit 1 if something is wrong
    python -m policylab.data.repair <store> --fix fill       # keep every episode, mark unknown values -1
    python -m policylab.data.repair <store> --fix truncate   # drop the episodes a per-episode array lacks

Checked: the per-episode meta arrays (`meta/episode_*`, one entry per episode, e.g. the seeds the
demo generators record) against the episode count, and chunk files missing inside the written
range of the data arrays (see `ReplayBuffer.find_missing_chunks`). An older `update_meta` deleted
`meta/episode_seeds` before rewriting it, so a kill in between left a store the generators refuse
to append to ("19 episodes but 0 seeds"). Surplus entries (more than episodes) are always cut;
missing ones are filled with -1 (`fill`: unknown, the generators may then re-run those seeds) or
their episodes dropped (`truncate`). Missing data chunks are only reported: the data is gone;
regenerate, or copy the episodes before the first missing chunk into a new store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from policylab.data.replay_buffer import EPISODE_ENDS, ReplayBuffer

EXPECTED_PER_EPISODE = ("episode_seeds",)  # written by policylab.data.generate; absent in stores from elsewhere
UNKNOWN = -1


def per_episode_lengths(buffer: ReplayBuffer) -> dict[str, int | None]:
    """{meta key: its length} for the per-episode meta arrays; None for an expected one that is missing."""
    keys = [k for k in buffer.meta.array_keys() if k.startswith("episode_") and k != EPISODE_ENDS]
    lengths: dict[str, int | None] = {k: int(buffer.meta[k].shape[0]) for k in keys}
    for key in EXPECTED_PER_EPISODE:
        lengths.setdefault(key, None)
    return lengths


def diagnose(buffer: ReplayBuffer) -> list[str]:
    """One line per problem, each naming the array."""
    problems = []
    for key, length in per_episode_lengths(buffer).items():
        if length is None:
            if buffer.n_episodes:
                problems.append(f"meta/{key} is missing for {buffer.n_episodes} episodes (an update_meta "
                                f"killed between delete and rewrite; a store not made by policylab's "
                                f"generators has none, which is fine)")
        elif length != buffer.n_episodes:
            problems.append(f"meta/{key} has {length} entries for {buffer.n_episodes} episodes")
    for key, chunks in buffer.find_missing_chunks().items():
        problems.append(f"data/{key}: {len(chunks)} chunk file(s) missing inside the written range, first "
                        f"{chunks[0]} (unrecoverable: those steps would read as zeros)")
    return problems


def repair(buffer: ReplayBuffer, fix: str) -> list[str]:
    """Make the per-episode meta arrays match the episodes; returns what was done, one line each."""
    done = []
    lengths = per_episode_lengths(buffer)
    if fix == "truncate":
        keep = min([n if n is not None else 0 for n in lengths.values()] + [buffer.n_episodes])
        if keep < buffer.n_episodes:
            n_drop = buffer.n_episodes - keep
            for _ in range(n_drop):
                buffer.drop_episode()
            done.append(f"dropped {n_drop} episodes (kept {keep})")
    for key, length in lengths.items():
        if length is None and fix == "truncate":
            continue  # no episodes are left to describe (or the key never existed)
        values = np.asarray(buffer.meta[key][:]) if length is not None else np.zeros((0,), np.int64)
        if len(values) == buffer.n_episodes:
            continue
        if len(values) > buffer.n_episodes:
            new = values[: buffer.n_episodes]
            done.append(f"meta/{key}: cut {len(values) - buffer.n_episodes} surplus entries")
        else:
            pad = np.full((buffer.n_episodes - len(values), *values.shape[1:]), UNKNOWN, values.dtype)
            new = np.concatenate([values, pad])
            done.append(f"meta/{key}: filled {len(pad)} unknown entries with {UNKNOWN}")
        buffer.update_meta({key: new})
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Diagnose / repair a ReplayBuffer zarr store.")
    parser.add_argument("store", type=Path)
    parser.add_argument("--fix", choices=("fill", "truncate"),
                        help="fill: keep every episode, unknown per-episode values become -1; "
                             "truncate: drop the episodes a per-episode array has no entry for")
    args = parser.parse_args(argv)
    with ReplayBuffer.create_from_path(args.store, mode="a" if args.fix else "r", check_chunks=False) as buffer:
        problems = diagnose(buffer)
        print(f"{args.store}: {buffer.n_episodes} episodes, {buffer.n_steps} steps")
        for line in problems:
            print(f"  problem: {line}")
        if not problems:
            print("  no problems found")
            return 0
        if not args.fix:
            print(f"  nothing changed. To repair: python -m policylab.data.repair {args.store} --fix fill "
                  f"(keep all episodes) or --fix truncate (drop episodes without entries)")
            return 1
        for line in repair(buffer, args.fix):
            print(f"  fixed: {line}")
        remaining = diagnose(buffer)
        for line in remaining:
            print(f"  still wrong: {line}")
        return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
