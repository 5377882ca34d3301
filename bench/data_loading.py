"""Data loading: per-item path (Diffusion Policy's) vs the vectorized batch path, side by side.

Two PushT-like datasets built in code (200 episodes of ~150 steps, T=16, To=2):
  lowdim: keypoint (9, 2) + agent_pos (2)  -> obs 20, action 2, batch 256
  image:  96x96x3 uint8 frames + agent_pos -> batch 64
(a) per-item: a DataLoader over `__getitem__` with the default collate (B Python calls a step)
(b) vectorized: `make_dataloader`, one `__getitems__` gather per key a step
Both on one core in the main process (num_workers=0). Also: peak memory of copying the image
store from disk into memory, as a ratio of the raw array bytes (target <= 1.1x).

    python bench/data_loading.py [--episodes 200] [--seconds 4] [--out bench/results/data_loading.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", default="bench/results/data_loading.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, meta, batch_size in (("lowdim", LOWDIM_META, 256), ("image", IMAGE_META, 64)):
            path = Path(tmp) / f"{name}.zarr"
            t0 = time.perf_counter()
            build_store(path, args.episodes, with_images=name == "image")
            build_s = time.perf_counter() - t0
            ds = SequenceDataset(meta, horizon=16, n_obs_steps=2, n_action_steps=8, zarr_path=path)
            per_item = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
            vectorized = make_dataloader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
            a_rate, a_mem = measure(per_item, args.seconds)
            b_rate, b_mem = measure(vectorized, args.seconds)
            results[name] = {"batch_size": batch_size, "n_samples": len(ds), "build_s": build_s,
                             "per_item_samples_s": a_rate, "vectorized_samples_s": b_rate,
                             "speedup": b_rate / a_rate, "per_item_peak_mb": a_mem, "vectorized_peak_mb": b_mem}
            rows.append((name, batch_size, a_rate, b_rate, b_rate / a_rate, a_mem, b_mem))
            if name == "image":
                results["image_copy_to_memory"] = copy_memory_ratio(path)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    copy = results["image_copy_to_memory"]
    print(f"\nimage store -> memory: raw {copy['raw_mb']:.0f} MB, peak {copy['peak_mb']:.0f} MB, "
          f"ratio {copy['ratio']:.3f} (target <= 1.1)")
    print(f"\n{'dataset':8} {'batch':>5} {'per-item/s':>11} {'vectorized/s':>13} {'speedup':>8} "
          f"{'per-item MB':>12} {'vector MB':>10}")
    for name, bs, a, b, ratio, am, bm in rows:
        print(f"{name:8} {bs:5d} {a:11.0f} {b:13.0f} {ratio:7.1f}x {am:12.1f} {bm:10.1f}")
    print(f"(targets: lowdim >= 5x, image >= 2x; one core; JSON in {out})")


if __name__ == "__main__":
    main()
