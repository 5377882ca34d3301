"""Evaluate a checkpoint in its task's simulator.

    python eval.py --checkpoint <run>/checkpoints/latest --output_dir <dir> [--device cpu|cuda]
                   [--no-ema] [n_test=100 max_steps=300 ...]   # env-runner overrides

Writes <output_dir>/eval_log.json (scores, per-seed rewards, video paths) and the videos.
"""

import argparse
import json
import sys
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from policylab.common.checkpoint import load_config
from policylab.common.safe_config import check_config
from policylab.policies.base import BasePolicy


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Evaluate a policylab checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (has config.yaml)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA copy")
    parser.add_argument("overrides", nargs="*", help="env runner settings as key=value")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    cfg = load_config(args.checkpoint)
    runner_cfg = OmegaConf.merge(cfg.task.env_runner, OmegaConf.from_dotlist(args.overrides),
                                 {"device": args.device})
    unknown = set(OmegaConf.from_dotlist(args.overrides)) - set(cfg.task.env_runner)
    if unknown:
        parser.error(f"unknown env runner setting(s) {sorted(unknown)}; known: {sorted(cfg.task.env_runner)}")
    # The runner config comes from the checkpoint: checked (allow-listed targets only) before anything is built.
    runner_cfg = check_config(runner_cfg, "task.env_runner")
    policy = BasePolicy.from_checkpoint(args.checkpoint, device=args.device, use_ema=not args.no_ema)
    runner = hydra.utils.instantiate(runner_cfg, output_dir=str(output_dir))
    log = {k: (v.item() if hasattr(v, "item") else v) for k, v in runner.run(policy).items()}
    (output_dir / "eval_log.json").write_text(json.dumps(log, indent=2, default=str))
    print(json.dumps({k: v for k, v in log.items() if "video" not in k and "sim_max_reward" not in k}, indent=2))
    print(f"eval_log.json and videos in {output_dir}")
    return log


if __name__ == "__main__":
    main(sys.argv[1:])
