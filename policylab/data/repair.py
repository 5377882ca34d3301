"""Check a ReplayBuffer store end to end; repair what an interrupted or older writer left.

    python -m policylab.data.repair <store>                    # check only: exit 0 fine, 1 problems
    python -m policylab.data.repair <store> fix=fill           # keeps every episode (no backup needed)
    python -m policylab.data.repair <store> fix=truncate backup=<copy.zarr>   # drops episodes
    python -m policylab.data.repair <store> fix=truncate no_backup=true       # ... without a copy

<store> (bare, first, or store=<path>) is a `.zarr` directory or `.zarr.zip` file. Options (key=value):

    fix=fill|truncate  repair (below); without it the store is only checked, nothing changes
    backup=<path>      write a byte copy of the store there before changing it (must not exist)
    no_backup=true     allow fix=truncate without a backup

Exit codes: 0 the store is fine (or was repaired), 1 problems remain, 2 refused (usage).

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
             unless `backup=<path>` (a byte copy of the store, made under the store's writer
             lock before anything changes; the path must not exist) or `no_backup=true` is given.
A store whose episode_ends and arrays disagree does not open; it is reported, nothing is changed.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np

from policylab.common.locking import store_lock
from policylab.common.overrides import MISSING, parse_overrides
from policylab.data.checksums import CHECKSUMS_KEY
from policylab.data.replay_buffer import ReplayBuffer, ReplayBufferError

UNKNOWN = -1
GENERATOR_KEY = "episode_seeds"  # written by policylab.data.generate; absent in stores from elsewhere
PROG = "python -m policylab.data.repair"
FIXES = ("fill", "truncate")
REFUSED = 2  # usage errors and the refusals below: nothing was read or changed


@dataclasses.dataclass
class RepairConfig:
    store: str = MISSING
    fix: str | None = None  # one of FIXES; None: check only
    backup: str | None = None
    no_backup: bool = False


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
                     f"fine); the generators append to it only after `fix=fill` marks its seeds unknown (-1)")
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


def _refuse(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(REFUSED)


def parse_args(argv: list[str]) -> RepairConfig:
    """The settings; a bad argument or fix=truncate with neither backup= nor no_backup=true exits 2."""
    argv = list(argv)
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        argv[0] = f"store={argv[0]}"
    try:
        cfg = parse_overrides(RepairConfig, argv, prog=PROG, usage=__doc__)
    except SystemExit as exit_:
        if isinstance(exit_.code, str):  # parse_overrides' messages exit 1, which here means "problems remain"
            _refuse(exit_.code)
        raise
    if cfg.fix not in (None, *FIXES):
        _refuse(f"{PROG}: fix={cfg.fix!r} is not a fix; expected fix=fill or fix=truncate (nothing changed)")
    if cfg.fix == "truncate" and not (cfg.backup or cfg.no_backup):
        _refuse(f"{PROG}: fix=truncate drops episodes: give backup=<new path> (a copy is written first) or "
                "no_backup=true; nothing changed")
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    store = Path(cfg.store)
    lock = store_lock(store).acquire() if cfg.fix else None
    try:
        done = [backup(store, Path(cfg.backup))] if cfg.fix and cfg.backup else []
        return _check_and_fix(store, cfg.fix, done)
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
            print(f"  nothing changed. To repair: {PROG} {path} fix=fill (keeps every "
                  f"episode) or fix=truncate backup=<copy> (drops the episodes from the first damaged one)")
            return 1
        for line in done + (fill(buffer) if fix == "fill" else truncate(buffer)):
            print(f"  fixed: {line}")
        remaining = [message for _, message in first_damaged_episodes(buffer).values()]
        for line in remaining:
            print(f"  still wrong: {line}")
        return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main())
