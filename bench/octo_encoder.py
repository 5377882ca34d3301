"""Octo encoder on CPU: milliseconds per `OctoModel.encode` and peak memory.

Octo 1.5's released layout: window To=2, primary camera 256x256 and wrist 128x128, 16 language
tokens (random embeddings: the text encoder runs once per instruction, not per step), one action
readout; 690 tokens per sample. Sizes ``octo_small`` and ``tiny`` (the test config's widths with
the same cameras), batch 1 and 32, no action head, ``torch.inference_mode``.

Each (size, batch) runs in a fresh process so its peak resident memory (``ru_maxrss``) is its own;
"build MB" is the resident memory once the model is built, before the first call. "ms/encode"
is the median call, "min ms" the fastest; "load" is the 1-minute load average at the end of the
case, since the CPU may be shared.

    python bench/octo_encoder.py [--sizes octo_small tiny] [--batches 1 32] [--seconds 10]
                                 [--out <json>]   (default: <bench root>/results/octo_encoder.json)
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._paths import add_out_argument, write_json
from policylab.models.octo import OctoModel, count_parameters, get_config
from policylab.models.octo.model import example_inputs

CAMERAS = {"primary": (256, 256), "wrist": (128, 128)}
WINDOW = 2
MIN_CALLS = 3


def rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tokens_per_sample(cfg) -> int:
    per_step = sum(cfg.camera_tokens(c) for c in cfg.cameras) + sum(cfg.readouts.values())
    per_step += cfg.language_tokens if cfg.repeat_task_tokens else 0
    return cfg.language_tokens + WINDOW * per_step


def run_case(size: str, batch: int, seconds: float) -> dict:
    """Time `encode` for one (size, batch) in this process; returns the measurements."""
    torch.manual_seed(0)
    cfg = get_config(size, cameras=CAMERAS, action_head=None)
    model = OctoModel(cfg).eval()
    obs, task = example_inputs(cfg, batch, WINDOW, torch.Generator().manual_seed(0))
    build_mb = rss_mb()
    times = []
    with torch.inference_mode():
        model.encode(obs, task)  # warm-up: allocator, kernels, mask cache
        start = time.perf_counter()
        while len(times) < MIN_CALLS or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            model.encode(obs, task)
            times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "size": size,
        "batch": batch,
        "window": WINDOW,
        "tokens_per_sample": tokens_per_sample(cfg),
        "params": count_parameters(model),
        "calls": len(times),
        "ms_median": 1e3 * times[len(times) // 2],
        "ms_min": 1e3 * times[0],
        "ms_per_sample": 1e3 * times[len(times) // 2] / batch,
        "build_mb": build_mb,
        "peak_mb": rss_mb(),
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["octo_small", "tiny"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum timed seconds per case")
    add_out_argument(parser, "octo_encoder")
    return parser


def main():
    args = build_parser().parse_args()
    results = []
    for size in args.sizes:
        for batch in args.batches:
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                results.append(pool.submit(run_case, size, batch, args.seconds).result())
            print(f"done {size} batch {batch}: {results[-1]['ms_median']:.1f} ms", flush=True)
    write_json(args.out, {"cameras": CAMERAS, "window": WINDOW, "results": results})
    print(
        f"\n{'size':11} {'params':>10} {'batch':>5} {'ms/encode':>10} {'min ms':>9} {'ms/sample':>10} "
        f"{'build MB':>9} {'peak MB':>8} {'load':>5}"
    )
    for r in results:
        print(
            f"{r['size']:11} {r['params']:10,d} {r['batch']:5d} {r['ms_median']:10.1f} {r['ms_min']:9.1f} "
            f"{r['ms_per_sample']:10.2f} {r['build_mb']:9.0f} {r['peak_mb']:8.0f} {r['load_average_1min']:5.1f}"
        )
    print(f"(CPU, {results[0]['threads']} threads, window {WINDOW}, primary 256x256 + wrist 128x128)")


if __name__ == "__main__":
    main()
