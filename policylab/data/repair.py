"""Check a ReplayBuffer store end to end; repair what an interrupted or older writer left.

    python -m policylab.data.repair <store>                     # check only: exit 0 fine, 1 problems
    python -m policylab.data.repair <store> --fix fill          # keeps every episode (no backup needed)
    python -m policylab.data.repair <store> --fix truncate --backup <copy.zarr>   # drops episodes
    python -m policylab.data.repair <store> --fix truncate --no-backup            # ... without a copy

Checked, and printed as checked: `meta/episode_ends` against every data array (lengths agree,
ends increase); chunk files inside the written range (a missing one reads as zeros); each
per-episode meta array (`meta/episode_*`, e.g. the generators' seeds) has an entry per episode;
the checksums (`meta/episode_checksums`): every episode's bytes are read and compared. A store
from elsewhere (Diffusion Policy's: no seeds, no checksums) is fine when its arrays and
episode_ends agree; it is reported as unchecked, not as a problem.

Fixes:
  fill       non-destructive: a per-episode array with too few entries gets -1 (unknown; the
             generators then skip no seed for those episodes), entries past the last episode
             (which describe no episode) are cut. No episode, no data row is removed.
  truncate   destructive: keeps the episodes before the first damaged one (a missing chunk, a
             checksum mismatch, no entry in a per-episode array) and drops the rest. Refused
             unless `--backup <path>` (a byte copy of the store, made under the store's writer
             lock before anything changes; the path must not exist) or `--no-backup` is given.
A store whose episode_ends and arrays disagree does not open; it is reported, nothing is changed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from policylab.common.locking import store_lock
from policylab.data.checksums import CHECKSUMS_KEY
from policylab.data.replay_buffer import ReplayBuffer, ReplayBufferError

UNKNOWN = -1
GENERATOR_KEY = "episode_seeds"  # written by policylab.data.generate; absent in stores from elsewhere


def per_episode_lengths(buffer: ReplayBuffer) -> dict[str, int]:
    """{meta key: its length} for the per-episode meta arrays that fill / truncate manage."""
    return {k: int(buffer.meta[k].shape[0]) for k in buffer.per_episode_meta_keys() if k != CHECKSUMS_KEY}


def first_damaged_episodes(buffer: ReplayBuffer) -> dict[str, tuple[int, str]]:
    """{check: (first episode it finds damaged, message)} for every failing check; {} when fine."""
    found = {}
    ends = buffer.episode_ends
    for key, length in per_episode_lengths(buffer).items():
        if length < buffer.n_episodes:
            found[f"meta/{key}"] = (length, (f"meta/{key} has {length} entries for {buffer.n_episodes} episodes "
                                            f"(episodes {length}..{buffer.n_episodes - 1} have none)"))
    for key, chunks in buffer.find_missing_chunks().items():
        rows = (buffer.data[key].shards or buffer.data[key].chunks)[0]
        first_row = min(int(c.removeprefix("c/").replace("/", ".").split(".")[0]) for c in chunks) * rows
        episode = int(np.searchsorted(ends, first_row, side="right"))
        found[f"data/{key} chunks"] = (episode, (f"data/{key}: {len(chunks)} chunk file(s) missing inside the written "
                                                f"range, first {chunks[0]} (episode {episode} on; those steps would "
                                                f"read as zeros)"))
    for key, episode, message in buffer.find_damaged_episodes():
        found.setdefault(f"data/{key} checksums", (episode, message))
    return found


def diagnose(buffer: ReplayBuffer) -> list[str]:
    """One line per problem, each naming the array (and episode): damage, and per-episode arrays
    with entries past the last episode. Reads every checksummed byte once."""
    problems = [message for _, message in first_damaged_episodes(buffer).values()]
    return problems + [f"meta/{k} has {n} entries for {buffer.n_episodes} episodes (entries past the last episode)"
                       for k, n in per_episode_lengths(buffer).items() if n > buffer.n_episodes]


def describe(buffer: ReplayBuffer) -> list[str]:
    """What was checked and what could not be, one line each (nothing here is a problem)."""
    keys = buffer.keys()
    lines = [f"checked: meta/episode_ends against {len(keys)} data arrays ({', '.join(keys)}): lengths agree",
             f"checked: chunk files of every data array inside rows 0..{max(buffer.n_steps - 1, 0)}"]
    lengths = per_episode_lengths(buffer)
    lines.append("checked: per-episode meta arrays: " + (", ".join(f"meta/{k} ({n} entries)" for k, n in lengths.items())
                                                         or "none"))
    if GENERATOR_KEY not in lengths and buffer.n_episodes:
        lines.append(f"note: no meta/{GENERATOR_KEY} (a store not written by policylab's demo generators, which is "
                     f"fine); the generators append to it only after `--fix fill` marks its seeds unknown (-1)")
    status = buffer.checksum_status()
    if status["algorithm"]:
        lines.append(f"checked: {status['algorithm']} checksums of {status['episodes']} episodes x "
                     f"{len(status['checked'])} keys ({', '.join(status['checked']) or 'none'}): every byte read and compared")
    for key, why in status["unchecked"].items():
        lines.append(f"unchecked: {'data/' + key if key != '*' else 'episodes'}: {why}")
    return lines


def fill(buffer: ReplayBuffer) -> list[str]:
    """Pad short per-episode arrays with -1, cut entries past the last episode; what was done."""
    done = []
    lengths = per_episode_lengths(buffer)
    if buffer.n_episodes and GENERATOR_KEY not in lengths:
        lengths[GENERATOR_KEY] = 0
    for key, length in lengths.items():
        values = np.asarray(buffer.meta[key][:]) if key in buffer.meta else np.zeros((0,), np.int64)
        if length > buffer.n_episodes:
            new = values[: buffer.n_episodes]
            done.append(f"meta/{key}: cut {length - buffer.n_episodes} entries past the last episode")
        elif length < buffer.n_episodes:
            pad = np.full((buffer.n_episodes - length, *values.shape[1:]), UNKNOWN, values.dtype)
            new = np.concatenate([values, pad])
            done.append(f"meta/{key}: filled {len(pad)} unknown entries with {UNKNOWN}")
        else:
            continue
        buffer.update_meta({key: new})
    return done


def truncate(buffer: ReplayBuffer) -> list[str]:
    """Drop every episode from the first damaged one on; what was done (which episodes survive)."""
    damaged = first_damaged_episodes(buffer)
    keep = min([e for e, _ in damaged.values()], default=buffer.n_episodes)
    n_drop = buffer.n_episodes - keep
    for _ in range(n_drop):
        buffer.drop_episode()
    return [f"dropped episodes {keep}..{keep + n_drop - 1} ({n_drop}); kept episodes 0..{keep - 1} ({keep})"
            if n_drop else f"dropped no episode: all {keep} are undamaged"] + fill(buffer)


def backup(store: Path, to: Path) -> str:
    """Byte copy of the store (directory or zip) at `to`, which must not exist."""
    if to.exists():
        raise SystemExit(f"backup path {to} exists; choose a new one (nothing changed)")
    to.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if store.is_dir() else shutil.copy2)(store, to)
    return f"backup of the store written to {to}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m policylab.data.repair", description="Check a ReplayBuffer zarr store end to end; repair it.",
        epilog="Exit codes: 0 the store is fine (or was repaired), 1 problems remain, 2 refused (usage).")
    parser.add_argument("store", type=Path)
    parser.add_argument("--fix", choices=("fill", "truncate"),
                        help="fill: keep every episode, unknown per-episode values become -1, entries past the last "
                             "episode are cut (no backup needed); truncate: DROP every episode from the first damaged "
                             "one on (needs --backup PATH or --no-backup)")
    parser.add_argument("--backup", type=Path, help="write a byte copy of the store here before changing it")
    parser.add_argument("--no-backup", action="store_true", help="allow --fix truncate without a backup")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.fix == "truncate" and not (args.backup or args.no_backup):
        parser.error("--fix truncate drops episodes: give --backup <new path> (a copy is written first) or "
                     "--no-backup; nothing changed")
    lock = store_lock(args.store).acquire() if args.fix else None
    try:
        done = [backup(args.store, args.backup)] if args.fix and args.backup else []
        return _check_and_fix(args.store, args.fix, done)
    finally:
        if lock is not None:
            lock.release()


def _check_and_fix(path: Path, fix: str | None, done: list[str]) -> int:
    try:
        buffer = ReplayBuffer.create_from_path(path, mode="a" if fix else "r", check_chunks=False)
    except ReplayBufferError as err:
        print(f"{path}: cannot be opened as a ReplayBuffer, nothing changed:\n  problem: {err}")
        return 1
    with buffer:
        print(f"{path}: {buffer.n_episodes} episodes, {buffer.n_steps} steps")
        for line in describe(buffer):
            print(f"  {line}")
        problems = diagnose(buffer)
        for line in problems:
            print(f"  problem: {line}")
        if not problems:
            print("  fine: no problems found")
        if not fix:
            if not problems:
                return 0
            print(f"  nothing changed. To repair: python -m policylab.data.repair {path} --fix fill (keeps every "
                  f"episode) or --fix truncate --backup <copy> (drops the episodes from the first damaged one)")
            return 1
        for line in done + (fill(buffer) if fix == "fill" else truncate(buffer)):
            print(f"  fixed: {line}")
        remaining = [message for _, message in first_damaged_episodes(buffer).values()]
        for line in remaining:
            print(f"  still wrong: {line}")
        return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
