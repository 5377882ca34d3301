"""Inference latency on CPU: milliseconds per `predict_action` for each policy variant.

A row is data: (config, name, Hydra overrides, batch size). The rows of one config share one set
of weights: the first row's policy is built from the config, and every later row is built from
its own overrides and loads those weights when they fit (`weights` says "shared"; a policy of
another kind keeps its own and says "own"). So DDPM-100, DDIM-16 and DDIM-8 below are the same
network with another `inference_scheduler` / `num_inference_steps`. To add, say, a consistency
policy at 1 and 3 steps with batch 64, append rows such as
    ("state", "CP-1", ["policy=<its config>", "policy.num_inference_steps=1"], 64)

Configs come from the real Hydra configs (experiment=dp_pusht_state_cnn: UNet 65.8M; experiment=
dp_pusht_image_cnn: UNet 251.5M + ResNet18, center crop 84 in eval); inputs are random
observations of the config's shapes, the normalizer is fitted on random data. Each config runs
in a fresh process. "ms" is the median call after one warm-up call, "min" the fastest, "ms/step"
the median divided by the denoising steps, "cpu ms" the process's CPU time per call (all
threads), which a busy machine inflates far less than the wall time; "load" is the 1-minute
load average, since the CPU may be shared.

    python bench/inference_latency.py [--configs state image] [--seconds 10] [--threads N]
                                      [--out bench/results/inference_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"state": ["experiment=dp_pusht_state_cnn"], "image": ["experiment=dp_pusht_image_cnn"]}
ROWS = [  # (config, name, overrides on top of the config, batch size)
    ("state", "DDPM-100", ["policy.inference_scheduler=ddpm", "policy.num_inference_steps=100"], 1),
    ("state", "DDIM-16", ["policy.inference_scheduler=ddim", "policy.num_inference_steps=16"], 1),
    ("state", "DDIM-8", ["policy.inference_scheduler=ddim", "policy.num_inference_steps=8"], 1),
    ("image", "DDPM-100", ["policy.inference_scheduler=ddpm", "policy.num_inference_steps=100"], 1),
    ("image", "DDIM-16", ["policy.inference_scheduler=ddim", "policy.num_inference_steps=16"], 1),
    ("image", "DDIM-8", ["policy.inference_scheduler=ddim", "policy.num_inference_steps=8"], 1),
]
MIN_CALLS = 3


def build_policy(overrides: list[str]):
    import hydra
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import policylab.common.config  # noqa: F401  (registers ${calc:})

    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        cfg = compose("train", overrides=overrides)
    OmegaConf.resolve(cfg)
    return hydra.utils.instantiate(cfg.policy).eval()


def random_normalizer(policy):
    """Fitted on random values of each low-dim key's shape; images map [0, 1] to [-1, 1]."""
    from policylab.data.normalizer import LinearNormalizer, get_image_range_normalizer

    gen = torch.Generator().manual_seed(0)
    data = {key: torch.rand(1000, *attr["shape"], generator=gen) * 512 for key, attr in policy.shape_meta["obs"].items()
            if key not in policy.rgb_keys}
    data["action"] = torch.rand(1000, policy.action_dim, generator=gen) * 512
    normalizer = LinearNormalizer().fit(data)
    for key in policy.rgb_keys:
        normalizer[key] = get_image_range_normalizer()
    return normalizer


def random_obs(policy, batch_size: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    obs = {}
    for key, attr in policy.shape_meta["obs"].items():
        value = torch.rand(batch_size, policy.n_obs_steps, *attr["shape"], generator=gen)
        obs[key] = value if key in policy.rgb_keys else value * 512
    return obs


def time_calls(policy, obs, seconds: float) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each call after one warm-up call."""
    gen = torch.Generator().manual_seed(2)
    policy.predict_action(obs, generator=gen)  # warm-up
    times, cpu, start = [], [], time.perf_counter()
    while len(times) < MIN_CALLS or time.perf_counter() - start < seconds:
        t0, c0 = time.perf_counter(), time.process_time()
        policy.predict_action(obs, generator=gen)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def run_config(config: str, seconds: float, threads: int | None = None) -> list[dict]:
    """Every row of `config`, in this (fresh) process, on one shared set of weights."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    results, shared = [], None
    for row_config, name, overrides, batch_size in ROWS:
        if row_config != config:
            continue
        policy = build_policy([*CONFIGS[config], *overrides])
        policy.set_normalizer(random_normalizer(policy))
        if shared is None:
            shared = policy.state_dict()
        own = policy.state_dict()
        fits = own.keys() == shared.keys() and all(v.shape == shared[k].shape for k, v in own.items())
        if fits:
            policy.load_state_dict(shared)
        times, cpu = time_calls(policy, random_obs(policy, batch_size), seconds)
        steps = getattr(policy, "num_inference_steps", None)
        median = statistics.median(times)
        results.append({
            "config": config, "variant": name, "overrides": overrides, "batch_size": batch_size,
            "scheduler": type(getattr(policy, "inference_scheduler", None)).__name__, "steps": steps,
            "ms": 1000 * median, "min_ms": 1000 * min(times), "ms_per_step": 1000 * median / steps if steps else None,
            "cpu_ms": 1000 * statistics.median(cpu), "calls": len(times), "weights": "shared" if fits else "own",
            "params_m": sum(p.numel() for p in policy.parameters()) / 1e6, "threads": torch.get_num_threads(),
            "load_avg_1m": os.getloadavg()[0],
        })
        del policy
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seconds", type=float, default=10.0, help="time per row (at least 3 calls)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "inference_latency.json"))
    args = parser.parse_args()
    results = []
    for config in args.configs:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            rows = pool.submit(run_config, config, args.seconds, args.threads).result()
        for r in rows:
            print(f"{r['config']} {r['variant']}: {r['ms']:.0f} ms", flush=True)
        results += rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "torch": torch.__version__, "cpus": os.cpu_count()}, indent=2))
    print(f"\n{'config':6} {'variant':9} {'batch':>5} {'params':>7} {'ms':>9} {'min ms':>9} {'ms/step':>8} "
          f"{'cpu ms':>9} {'calls':>5} {'weights':>7} {'load':>5}")
    for r in results:
        per_step = f"{r['ms_per_step']:8.1f}" if r["ms_per_step"] is not None else f"{'-':>8}"
        print(f"{r['config']:6} {r['variant']:9} {r['batch_size']:5d} {r['params_m']:6.1f}M {r['ms']:9.1f} "
              f"{r['min_ms']:9.1f} {per_step} {r['cpu_ms']:9.1f} {r['calls']:5d} {r['weights']:>7} "
              f"{r['load_avg_1m']:5.1f}")
    print(f"(ms per predict_action: median after one warm-up call; {results[0]['threads']} threads; JSON in {out})")


if __name__ == "__main__":
    main()
