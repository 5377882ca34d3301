"""Training throughput on CPU: samples/s and peak memory of one step of the supervised workspace.

Three configs, composed from the real Hydra configs (so the numbers follow them):
  state  experiment=dp_pusht_state_cnn   UNet [256,512,1024] (65.8M), batch 256
  image  experiment=dp_pusht_image_cnn   UNet [512,1024,2048] dsed 128 (251.5M) + ResNet18 GroupNorm,
                                         spatial softmax, random 84x84 crops, batch 64
  tiny   debug=tiny                      the CI config, batch 16
  quickstart experiment=pusht_quickstart UNet [32,64,128] (1.1M), batch 64
A step is what `SupervisedWorkspace` does per optimizer step: `compute_loss`, backward, AdamW, LR
schedule, EMA update. "excl. data" repeats steps on one batch already in memory; "incl. data"
draws each batch from the workspace's DataLoader (vectorized `get_batch`, main process) inside
the timed region. Data: a synthetic PushT-layout store made in code (random low-dim values,
smooth 96x96 frames). Each config runs in a fresh process, so "peak MB" (`ru_maxrss`) is its
own; "step MB" is the resident-memory peak sampled during the steps minus the resident memory
before them. "load" is the 1-minute load average at the end, since the CPU may be shared; "cpu s"
is the process's CPU time per step (all threads), which a busy machine inflates far less than
the wall time.

    python bench/train_throughput.py [--configs state image tiny] [--threads N] [--device cpu|cuda]
                                     [--variants eager compile bf16 auto fp16 compile+bf16 fused_adamw bf16+fused_adamw
                                                 channels_last threads=1]
                                     [--steps N] [--emulate-avx2] [--out <json>]

The JSON goes to <bench root>/results/train_throughput.json unless --out is given.

The CPU's flags that decide bf16/fp16 speed (avx2, avx512*, amx*) head the output and the JSON,
with each case's `training.mixed_precision` verdict (policylab/common/precision.py): whether the
device computes bf16 natively, and what `auto` picks. `--emulate-avx2` runs the cases as on an
AVX2-only CPU (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2), where bf16 has no native kernels.

`--variants` runs each config once per speed-up, each in a fresh process, and prints the step time
and CPU time as ratios to the first variant, with the loss of one fixed batch under fixed noise
(relative difference to the first variant's: the variants must compute the same thing). On a GPU,
`--device cuda` adds the peak CUDA memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._paths import add_out_argument, write_json

CONFIGS = {  # name -> (Hydra overrides, warm-up steps, measured steps per mode, store with images)
    "state": (["experiment=dp_pusht_state_cnn"], 1, 4, False),
    "image": (["experiment=dp_pusht_image_cnn"], 1, 3, True),
    "tiny": (["debug=tiny"], 3, 20, False),
    "quickstart": (["experiment=pusht_quickstart"], 3, 20, False),
}
EPISODES = 30  # enough windows for a batch of 256 (about 4,000 samples)
VARIANTS = {  # name -> (extra overrides, torch threads: None = --threads, else this many)
    "eager": ([], None),
    "compile": (["training.compile=true"], None),
    "bf16": (["training.mixed_precision=bf16"], None),
    "auto": (["training.mixed_precision=auto"], None),  # bf16 only where native, else fp32
    "fp16": (["training.mixed_precision=fp16"], None),  # with a GradScaler
    "compile+bf16": (["training.compile=true", "training.mixed_precision=bf16"], None),
    "fused_adamw": (["optimizer.fused=true"], None),
    "bf16+fused_adamw": (["training.mixed_precision=bf16", "optimizer.fused=true"], None),
    "channels_last": (["training.channels_last=true"], None),  # Conv2d only: a no-op for the state UNet
    "threads=1": ([], 1),
}


class RssPeak:
    """Samples this process's resident memory every few ms while active."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class _Batches:
    """A one-epoch 'loader' of n batches for `_train_epoch`: the same batch, or fresh ones from `source`."""

    def __init__(self, n: int, batch=None, source=None):
        self.n, self.batch, self.source = n, batch, source

    def __len__(self):
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch if self.source is None else next(self.source)


def _to(batch, device):
    from policylab.workspaces.base import to_device

    return to_device(batch, device)


def _forever(loader):
    while True:
        yield from loader


def run_case(name: str, store: str, workdir: str, threads: int | None, variant: str = "eager",
             device: str = "cpu", steps_override: int | None = None) -> dict:
    """One config and variant in this (fresh) process: build the workspace, time single steps."""
    extra, variant_threads = VARIANTS[variant]
    threads = variant_threads or threads
    if threads:
        torch.set_num_threads(threads)
    import hydra
    from diffusers.optimization import get_scheduler

    from policylab.common.config import compose
    from policylab.common.logging import RunLogger
    from policylab.common.precision import native_support
    from policylab.workspaces.supervised import SupervisedWorkspace

    sys.stderr = open(os.devnull, "w")  # noqa: SIM115  (this worker process's whole life: the workspace's progress bar)
    overrides, warmup, steps, _ = CONFIGS[name]
    steps = steps_override or steps
    if "compile" in variant:
        warmup = max(warmup, 2)  # the first steps compile forward and backward
    cfg = compose([*overrides, *extra, f"task.dataset.zarr_path={store}", "logging.mode=disabled",
                   f"training.device={device}"], config_dir=REPO / "config", resolve=True)
    ws = SupervisedWorkspace(cfg, workdir)
    dataset = hydra.utils.instantiate(cfg.task.dataset)
    ws.policy.set_normalizer(dataset.get_normalizer())
    if ws.ema is not None:
        ws.ema.averaged_model.set_normalizer(ws.policy.normalizer)
    loader = ws._loader(dataset, ws.c["dataloader"], shard=True)
    scheduler = get_scheduler("cosine", optimizer=ws.optimizer, num_warmup_steps=10, num_training_steps=10_000)
    logger = RunLogger(workdir, enabled=False)
    batch_size = cfg.dataloader.batch_size
    fixed = next(iter(loader))
    source = _forever(loader)
    cuda = ws.device.type == "cuda"
    with torch.no_grad():  # the loss of one batch under fixed noise: every variant must match eager's
        torch.manual_seed(0)
        with ws.precision.autocast():
            first_loss = ws.policy.compute_loss(_to(fixed, ws.device))[0].float().item()

    cpu = {"excl": [], "incl": []}
    bf16_native, bf16_why = native_support(torch.bfloat16, ws.device)

    def step(batches, mode: str | None = None) -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        ws._train_epoch(ws.policy, batches, scheduler, logger)
        if cuda:
            torch.cuda.synchronize()
        if mode is not None:
            cpu[mode].append(time.process_time() - c0)
        return time.perf_counter() - t0

    for _ in range(warmup):
        step(_Batches(1, batch=fixed))
    rss_before = psutil.Process().memory_info().rss
    with RssPeak() as peak:
        excl = [step(_Batches(1, batch=fixed), "excl") for _ in range(steps)]
        incl = [step(_Batches(1, source=source), "incl") for _ in range(steps)]
    t0 = time.perf_counter()
    for _ in range(steps):
        next(source)
    load_s = (time.perf_counter() - t0) / steps
    n_params = sum(p.numel() for p in ws.policy.parameters())
    return {
        "config": name, "variant": variant, "device": str(ws.device), "first_loss": first_loss,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None, "overrides": [*overrides, *extra], "batch_size": batch_size, "params_m": n_params / 1e6,
        "steps": steps, "warmup": warmup, "threads": torch.get_num_threads(),
        "step_s_excl_data": statistics.median(excl), "step_s_incl_data": statistics.median(incl),
        "min_step_s_excl_data": min(excl), "min_step_s_incl_data": min(incl),
        "cpu_s_per_step_excl_data": statistics.median(cpu["excl"]),
        "cpu_s_per_step_incl_data": statistics.median(cpu["incl"]),
        "samples_s_excl_data": batch_size / statistics.median(excl),
        "samples_s_incl_data": batch_size / statistics.median(incl),
        "data_only_samples_s": batch_size / load_s,
        "step_times_excl": excl, "step_times_incl": incl,
        "rss_before_steps_mb": rss_before / 2**20, "step_peak_delta_mb": (peak.peak - rss_before) / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_avg_1m": os.getloadavg()[0],
        "precision": ws.precision.reason, "bf16_native": bf16_native, "bf16_why": bf16_why,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def speed_flags() -> list[str]:
    """The CPU flags that decide bf16 / fp16 speed (x86 AVX2/AVX-512/AMX, Arm bf16/fphp)."""
    from policylab.common.precision import cpu_flags

    flags = cpu_flags() or set()
    return sorted(f for f in flags if f.startswith(("avx2", "avx512", "amx")) or f in ("bf16", "fphp"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--episodes", type=int, default=EPISODES)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--variants", nargs="+", default=["eager"], choices=list(VARIANTS),
                        help="speed-ups compared side by side (ratios to the first)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per mode (default: the config's)")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="run the cases as on an AVX2-only CPU (oneDNN and ATen capped at AVX2)")
    add_out_argument(parser, "train_throughput")
    return parser


def main():
    args = build_parser().parse_args()
    if args.emulate_avx2:  # read by the spawned workers' oneDNN and ATen when they load
        os.environ.update(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    flags = speed_flags()
    print(f"CPU flags: {' '.join(flags) or '(none found)'}" + ("; emulating AVX2 only" if args.emulate_avx2 else ""),
          flush=True)
    # the data-loading bench's synthetic PushT store
    from bench.data_loading import build_store

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for images in sorted({CONFIGS[name][3] for name in args.configs}):
            stores[images] = Path(tmp) / f"pusht_{'image' if images else 'lowdim'}.zarr"
            build_store(stores[images], args.episodes, with_images=images)
        for name in args.configs:
            for variant in args.variants:
                # spawn: a fresh interpreter per case, so its peak memory and compile caches are its own
                with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                    workdir = Path(tmp) / f"{name}-{variant}"
                    result = pool.submit(run_case, name, str(stores[CONFIGS[name][3]]), str(workdir), args.threads,
                                         variant, args.device, args.steps).result()
                results.append(result)
                print(f"{name} {variant}: {result['samples_s_excl_data']:.1f} samples/s excl. data, "
                      f"loss {result['first_loss']:.5f}, {result['precision']}", flush=True)
    write_json(args.out, {"results": results, "torch": torch.__version__, "cpus": os.cpu_count(),
                          "cpu_flags": flags, "emulate_avx2": args.emulate_avx2,
                          "cpu_capability": results[0]["cpu_capability"], "bf16_native": results[0]["bf16_native"],
                          "bf16_why": results[0]["bf16_why"]})
    print(f"\n{'config':6} {'batch':>5} {'params':>7} | {'excl. data: s/step':>18} {'(min)':>6} {'samples/s':>9} | "
          f"{'incl. data: s/step':>18} {'(min)':>6} {'samples/s':>9} | {'cpu s excl':>10} {'data-only/s':>11} "
          f"{'step MB':>8} {'peak MB':>8} {'load':>5}")
    for r in results:
        print(f"{r['config']:6} {r['batch_size']:5d} {r['params_m']:6.1f}M | {r['step_s_excl_data']:18.3f} "
              f"{r['min_step_s_excl_data']:6.3f} {r['samples_s_excl_data']:9.1f} | {r['step_s_incl_data']:18.3f} "
              f"{r['min_step_s_incl_data']:6.3f} {r['samples_s_incl_data']:9.1f} | {r['cpu_s_per_step_excl_data']:10.3f} "
              f"{r['data_only_samples_s']:11.0f} "
              f"{r['step_peak_delta_mb']:8.0f} {r['peak_rss_mb']:8.0f} {r['load_avg_1m']:5.1f}")
    print(f"(medians over {', '.join(str(r['steps']) for r in results)} steps; samples/s from the median; "
          f"{results[0]['threads']} threads)")
    print(f"bf16 native: {results[0]['bf16_native']} ({results[0]['bf16_why']}); "
          f"torch CPU capability {results[0]['cpu_capability']}")
    if len(args.variants) > 1:
        print(f"\n{'config':6} {'variant':14} {'threads':>7} {'s/step':>8} {'x eager':>8} {'cpu s':>7} {'x eager':>8} "
              f"{'loss':>9} {'d loss':>8} {'cuda MB':>8}")
        for r in results:
            base = next(b for b in results if b["config"] == r["config"] and b["variant"] == args.variants[0])
            peak = f"{r['cuda_peak_mb']:8.0f}" if r["cuda_peak_mb"] is not None else f"{'-':>8}"
            print(f"{r['config']:6} {r['variant']:14} {r['threads']:7d} {r['step_s_excl_data']:8.3f} "
                  f"{r['step_s_excl_data'] / base['step_s_excl_data']:8.2f} {r['cpu_s_per_step_excl_data']:7.3f} "
                  f"{r['cpu_s_per_step_excl_data'] / base['cpu_s_per_step_excl_data']:8.2f} {r['first_loss']:9.5f} "
                  f"{abs(r['first_loss'] - base['first_loss']) / abs(base['first_loss']):8.1e} {peak}")


if __name__ == "__main__":
    main()
