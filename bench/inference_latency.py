"""Inference latency on CPU: milliseconds per `predict_action` for each policy variant.

A row is data: (config, name, Hydra overrides, batch size). The rows of one config share one set
of weights: the first row's policy is built from the config, and every later row is built from
its own overrides and loads the backbone and encoder weights (`weights` says "shared"). So
DDPM-100, DDIM-16 and DDIM-8 are one network with another `inference_scheduler` /
`num_inference_steps`, and a row with `policy=<another method>` builds that method on the same
backbone, encoder and horizons: CT-1 / CT-3 (consistency training's Karras chain, 1 or 3
evaluations), CD-1 / CD-3 (the distilled policy's LCMScheduler, 1 or 3 evaluations). "NFE" is
network evaluations per call, "vs DDIM-16" the speed-up over DDIM-16 at the same config and batch.

Configs come from the real Hydra configs (experiment=dp_pusht_state_cnn: UNet 65.8M; experiment=
dp_pusht_image_cnn: UNet 251.5M + ResNet18, center crop 84 in eval); inputs are random
observations of the config's shapes, the normalizer is fitted on random data. Each config runs
in a fresh process. "ms" is the median call after one warm-up call, "min" the fastest, "ms/step"
the median divided by the denoising steps, "cpu ms" the process's CPU time per call (all
threads), which a busy machine inflates far less than the wall time; "load" is the 1-minute
load average, since the CPU may be shared.

    python bench/inference_latency.py [--configs state image] [--seconds 10] [--threads N]
                                      [--out <json>]   (default: <bench root>/results/inference_latency.json)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._paths import add_out_argument, write_json

CONFIGS = {"state": ["experiment=dp_pusht_state_cnn"], "image": ["experiment=dp_pusht_image_cnn"]}
CT_3 = "policy.inference_sigmas=[80.0,0.8,0.2]"  # one step from sigma_max, re-noised twice
ROWS = [  # (config, name, overrides on top of the config, batch size)
    *[(config, name, overrides, batch)
      for config in ("state", "image")
      for batch in (1, 64)
      for name, overrides in [
          ("DDPM-100", ["policy.inference_scheduler=ddpm", "policy.num_inference_steps=100"]),
          ("DDIM-16", ["policy.inference_scheduler=ddim", "policy.num_inference_steps=16"]),
          ("DDIM-8", ["policy.inference_scheduler=ddim", "policy.num_inference_steps=8"]),
          ("CT-1", ["policy=consistency_training"]),
          ("CT-3", ["policy=consistency_training", CT_3]),
          ("CD-1", ["policy=consistency_distill", "policy.num_inference_steps=1"]),
          ("CD-3", ["policy=consistency_distill", "policy.num_inference_steps=3"]),
      ]
      # image DDPM-100 at batch 64 is minutes per call on a CPU; DDIM-8 at 64 adds nothing
      if not (batch == 64 and (name == "DDIM-8" or (config == "image" and name == "DDPM-100")))],
]
MIN_CALLS = 3


def compose_config(overrides: list[str]):
    from policylab.common.config import compose

    return compose(overrides, config_dir=REPO / "config")


def build_policy(config: str, overrides: list[str]):
    """The config's Diffusion Policy with `overrides`; with `policy=<another method>` among them, that
    method on the same backbone, encoder, task and horizons (copied from the Diffusion Policy config)."""
    import hydra
    from omegaconf import OmegaConf

    method = next((o.split("=", 1)[1] for o in overrides if o.startswith("policy=")), None)
    if method is None:
        cfg = compose_config([*CONFIGS[config], *overrides])
    else:
        ref = compose_config(CONFIGS[config])
        rest = [o for o in overrides if not o.startswith("policy=")]
        if method == "consistency_distill":
            rest.append("policy.teacher=null")  # the teacher matters for training only
        cfg = compose_config([f"task={ref.task.name}", f"policy={method}", f"horizon={ref.horizon}",
                              f"n_obs_steps={ref.n_obs_steps}", f"n_action_steps={ref.n_action_steps}", *rest])
        cfg.policy.model, cfg.policy.obs_encoder = ref.policy.model, ref.policy.obs_encoder
    OmegaConf.resolve(cfg)
    return hydra.utils.instantiate(cfg.policy).eval()


def network_evaluations(policy) -> int | None:
    if hasattr(policy, "inference_sigmas"):
        return len(policy.inference_sigmas)
    return getattr(policy, "num_inference_steps", None)


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
        policy = build_policy(config, overrides)
        policy.set_normalizer(random_normalizer(policy))
        if shared is None:
            shared = policy.state_dict()
        own = policy.state_dict()
        # the backbone and encoder carry over between methods (a consistency target copy stays own)
        common = {k: v for k, v in shared.items() if k in own and own[k].shape == v.shape}
        fits = all(k in common for k in own if k.startswith(("model.", "obs_encoder.")))
        if fits:
            policy.load_state_dict(common, strict=False)
        times, cpu = time_calls(policy, random_obs(policy, batch_size), seconds)
        steps = network_evaluations(policy)
        median = statistics.median(times)
        results.append({
            "config": config, "variant": name, "overrides": overrides, "batch_size": batch_size,
            "scheduler": type(getattr(policy, "inference_scheduler", getattr(policy, "lcm", None))).__name__, "steps": steps,
            "ms": 1000 * median, "min_ms": 1000 * min(times), "ms_per_step": 1000 * median / steps if steps else None,
            "cpu_ms": 1000 * statistics.median(cpu), "calls": len(times), "weights": "shared" if fits else "own",
            "params_m": sum(p.numel() for p in policy.parameters()) / 1e6, "threads": torch.get_num_threads(),
            "load_avg_1m": os.getloadavg()[0],
        })
        del policy
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seconds", type=float, default=10.0, help="time per row (at least 3 calls)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    add_out_argument(parser, "inference_latency")
    return parser


def main():
    args = build_parser().parse_args()
    results = []
    for config in args.configs:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            rows = pool.submit(run_config, config, args.seconds, args.threads).result()
        for r in rows:
            print(f"{r['config']} {r['variant']}: {r['ms']:.0f} ms", flush=True)
        results += rows
    for r in results:  # speed-up over DDIM-16 of the same config and batch size
        ref = next((x for x in results if x["variant"] == "DDIM-16" and x["config"] == r["config"]
                    and x["batch_size"] == r["batch_size"]), None)
        r["x_vs_ddim16"] = ref["ms"] / r["ms"] if ref else None
    write_json(args.out, {"results": results, "torch": torch.__version__, "cpus": os.cpu_count()})
    print(f"\n{'config':6} {'variant':9} {'batch':>5} {'params':>7} {'NFE':>4} {'ms':>9} {'min ms':>9} {'ms/step':>8} "
          f"{'cpu ms':>9} {'vs DDIM-16':>10} {'calls':>5} {'weights':>7} {'load':>5}")
    for r in results:
        per_step = f"{r['ms_per_step']:8.1f}" if r["ms_per_step"] is not None else f"{'-':>8}"
        speedup = f"{r['x_vs_ddim16']:9.1f}x" if r["x_vs_ddim16"] else f"{'-':>10}"
        print(f"{r['config']:6} {r['variant']:9} {r['batch_size']:5d} {r['params_m']:6.1f}M {r['steps'] or 0:4d} "
              f"{r['ms']:9.1f} {r['min_ms']:9.1f} {per_step} {r['cpu_ms']:9.1f} {speedup} {r['calls']:5d} "
              f"{r['weights']:>7} {r['load_avg_1m']:5.1f}")
    print(f"(ms per predict_action: median after one warm-up call; {results[0]['threads']} threads)")


if __name__ == "__main__":
    main()
