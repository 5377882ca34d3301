"""Data loading: per-item path (Diffusion Policy's) vs the vectorized batch path, side by side.

Two PushT-like datasets built in code (200 episodes of ~150 steps, T=16, To=2):
  lowdim: keypoint (9, 2) + agent_pos (2)  -> obs 20, action 2, batch 256
  image:  96x96x3 uint8 frames + agent_pos -> batch 64
(dp) Diffusion Policy's per-item path, re-implemented here from its published algorithm (PushT
     datasets: slice each key's window, pad into a fresh array, concatenate keypoint + agent_pos,
     image / 255 over all T frames, `torch.from_numpy`), so it runs on the same store and zarr 3
(a) per-item: a DataLoader over policylab's `__getitem__` with the default collate (what a user's
    own DataLoader or worker processes call; B Python calls a step)
(b) vectorized: `make_dataloader`, one `__getitems__` gather per key a step
All on one core in the main process (num_workers=0), the same shuffled order of windows. Also: peak memory of copying the image
store from disk into memory, as a ratio of the raw array bytes (target <= 1.1x), and what the stores'
checksums cost: they are verified once, when a store is loaded into memory (`copy_from_path`), so
the batches above pay nothing; the load time and its verification share are printed.

    python bench/data_loading.py [--episodes 200] [--seconds 4] [--rounds 2] [--datasets lowdim,image]
                                 [--out <json>]   (default: <bench root>/results/data_loading.json)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._paths import add_out_argument, write_json
from policylab.data.datasets.base import make_dataloader
from policylab.data.datasets.sequence import SequenceDataset
from policylab.data.replay_buffer import ReplayBuffer

LOWDIM_META = {"obs": {"keypoint": {"shape": [18]}, "agent_pos": {"shape": [2], "zarr_key": "state", "index": [0, 2]}},
               "action": {"shape": [2]}}
IMAGE_META = {"obs": {"image": {"shape": [3, 96, 96], "type": "rgb", "zarr_key": "img"},
                      "agent_pos": {"shape": [2], "zarr_key": "state", "index": [0, 2]}},
              "action": {"shape": [2]}}


def build_store(path: Path, n_episodes: int, with_images: bool, seed: int = 0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    rb = ReplayBuffer.create_from_path(path, mode="w")
    for _ in range(n_episodes):
        n = int(rng.integers(120, 181))
        episode = {"state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
                   "keypoint": rng.uniform(0, 512, (n, 9, 2)).astype(np.float32),
                   "action": rng.uniform(0, 512, (n, 2)).astype(np.float32)}
        if with_images:
            # smooth frames compress like rendered scenes, not like noise
            base = rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
            episode["img"] = np.broadcast_to(base, (n, 96, 96, 3)).copy()
        rb.add_episode(episode, chunks={"img": (1, 96, 96, 3)}, compressors="default")
    return rb


class DPStyleDataset(torch.utils.data.Dataset):
    """Diffusion Policy's PushT `__getitem__` (lowdim or image), on the same in-memory arrays."""

    def __init__(self, ds: SequenceDataset, image: bool):
        self.indices, self.T = ds.sampler.indices, ds.horizon
        self.arrays = {key: ds.replay_buffer[key] for key in ds.sampler.keys}
        self.image = image

    def __len__(self) -> int:
        return len(self.indices)

    def _window(self, key: str, b0: int, b1: int, s0: int, s1: int) -> np.ndarray:
        arr = self.arrays[key]
        sample = arr[b0:b1]
        if s0 == 0 and s1 == self.T:
            return sample
        data = np.zeros((self.T, *arr.shape[1:]), dtype=arr.dtype)
        data[:s0] = sample[0]
        data[s1:] = sample[-1]
        data[s0:s1] = sample
        return data

    def __getitem__(self, idx: int) -> dict:
        b0, b1, s0, s1 = self.indices[idx]
        sample = {key: self._window(key, b0, b1, s0, s1) for key in self.arrays}
        if self.image:
            data = {"obs": {"image": np.moveaxis(sample["img"], -1, 1) / 255,
                            "agent_pos": sample["state"][:, :2].astype(np.float32)},
                    "action": sample["action"].astype(np.float32)}
            return {"obs": {k: torch.from_numpy(v) for k, v in data["obs"].items()},
                    "action": torch.from_numpy(data["action"])}
        keypoint = sample["keypoint"]
        obs = np.concatenate([keypoint.reshape(len(keypoint), -1), sample["state"][:, :2]], axis=-1)
        return {"obs": torch.from_numpy(obs), "action": torch.from_numpy(sample["action"])}


def measure(loader, seconds: float) -> tuple[float, float]:
    """(samples per second, peak traced MB) iterating `loader` for about `seconds`."""
    tracemalloc.start()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in loader:
            n += batch["action"].shape[0]
            if time.perf_counter() - start >= seconds:
                break
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return n / elapsed, peak


def copy_memory_ratio(path: Path) -> dict:
    tracemalloc.start()
    rb = ReplayBuffer.copy_from_path(path, keys=["img"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    raw = rb["img"].nbytes
    return {"raw_mb": raw / 2**20, "peak_mb": peak / 2**20, "ratio": peak / raw}


def cpu_flags() -> str:
    """The SIMD / matrix flags of this CPU that bear on speed (avx2, avx512*, amx*), as lscpu names them."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    return " ".join(sorted({f for f in flags if f == "avx2" or f.startswith(("avx512", "amx"))}))


def checksum_cost(path: Path) -> dict:
    """Load time of the store into memory (`copy_from_path`, checksums verified) and the part of it
    that is the verification (CRC-32C of every decoded byte of every episode)."""
    t0 = time.perf_counter()
    rb = ReplayBuffer.copy_from_path(path)
    load_s = time.perf_counter() - t0
    disk = ReplayBuffer.create_from_path(path)
    data = {key: rb[key] for key in disk.checksum_status()["checked"]}
    t0 = time.perf_counter()
    disk.verify_rows(data)
    verify_s = time.perf_counter() - t0
    mb = sum(v.nbytes for v in data.values()) / 2**20
    return {"load_s": load_s, "verify_s": verify_s, "verified_mb": mb, "verify_share_of_load": verify_s / load_s,
            "crc32c_gb_s": mb / 1024 / verify_s}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--datasets", default="lowdim,image", help="comma-separated subset of lowdim,image")
    add_out_argument(parser, "data_loading")
    return parser


def main():
    args = build_parser().parse_args()
    torch.set_num_threads(1)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, meta, batch_size in (("lowdim", LOWDIM_META, 256), ("image", IMAGE_META, 64)):
            if name not in args.datasets.split(","):
                continue
            path = Path(tmp) / f"{name}.zarr"
            t0 = time.perf_counter()
            build_store(path, args.episodes, with_images=name == "image")
            build_s = time.perf_counter() - t0
            checksums = checksum_cost(path)
            ds = SequenceDataset(meta, horizon=16, n_obs_steps=2, n_action_steps=8, zarr_path=path)
            loaders = {"dp": DataLoader(DPStyleDataset(ds, image=name == "image"), batch_size=batch_size,
                                        shuffle=True, num_workers=0),
                       "per_item": DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0),
                       "vectorized": make_dataloader(ds, batch_size=batch_size, shuffle=True, num_workers=0)}
            rates = {}
            for _ in range(args.rounds):  # alternate, so a change in the machine's load hits every variant
                for variant, loader in loaders.items():
                    rate, mem = measure(loader, args.seconds)
                    rates.setdefault(variant, []).append((rate, mem))
            best = {v: max(r for r, _ in rs) for v, rs in rates.items()}
            peak = {v: max(m for _, m in rs) for v, rs in rates.items()}
            results[name] = {"batch_size": batch_size, "n_samples": len(ds), "build_s": build_s,
                             **{f"{v}_samples_s": best[v] for v in loaders}, **{f"{v}_peak_mb": peak[v] for v in loaders},
                             "per_item_vs_dp": best["per_item"] / best["dp"],
                             "vectorized_vs_dp": best["vectorized"] / best["dp"],
                             "speedup": best["vectorized"] / best["per_item"], "checksums": checksums}
            rows.append((name, batch_size, best["dp"], best["per_item"], best["vectorized"],
                         best["per_item"] / best["dp"], best["vectorized"] / best["dp"]))
            if name == "image":
                results["image_copy_to_memory"] = copy_memory_ratio(path)
    results["machine"] = {"cpu_flags": cpu_flags(), "cores": os.cpu_count(), "episodes": args.episodes,
                          "seconds": args.seconds, "rounds": args.rounds}
    write_json(args.out, results)
    copy = results.get("image_copy_to_memory")
    if copy:
        print(f"\nimage store -> memory: raw {copy['raw_mb']:.0f} MB, peak {copy['peak_mb']:.0f} MB, "
              f"ratio {copy['ratio']:.3f} (target <= 1.1)")
    for name in (n for n in ("lowdim", "image") if n in results):
        c = results[name]["checksums"]
        print(f"{name} store -> memory: {c['load_s']:.2f} s, of which checksum verification {c['verify_s']:.2f} s "
              f"({c['verified_mb']:.1f} MB at {c['crc32c_gb_s']:.2f} GB/s, {100 * c['verify_share_of_load']:.0f}%)")
    print(f"\n{'dataset':8} {'batch':>5} {'DP per-item/s':>14} {'per-item/s':>11} {'vectorized/s':>13} "
          f"{'per-item x DP':>14} {'vectorized x DP':>16}")
    for name, bs, dp, a, b, a_ratio, b_ratio in rows:
        print(f"{name:8} {bs:5d} {dp:14.0f} {a:11.0f} {b:13.0f} {a_ratio:13.2f}x {b_ratio:15.1f}x")
    print(f"CPU flags: {results['machine']['cpu_flags']}")
    print(f"(targets: per-item >= 1x DP; vectorized >= 10x DP; one core; best of "
          f"{args.rounds} alternating rounds)")


if __name__ == "__main__":
    main()
