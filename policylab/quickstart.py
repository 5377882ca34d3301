"""The main job, end to end on a CPU in about 10 minutes: expert demos -> train -> evaluate.

    python -m policylab.quickstart [--episodes 40] [--minutes 6] [--out outputs/quickstart]

1. the scripted PushT expert writes `--episodes` demonstrations to a zarr ReplayBuffer,
2. `train.py experiment=pusht_state_cpu` trains a diffusion policy for `--minutes`,
3. `eval.py` scores the EMA policy on 10 test seeds and records videos,
then prints where the score, the checkpoint and the videos are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(cmd: list[str]) -> None:
    print("\n$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--n_test", type=int, default=10)
    parser.add_argument("--out", default="outputs/quickstart")
    args = parser.parse_args(argv)
    out = Path(args.out)
    data = out / "pusht_expert.zarr"
    run([sys.executable, "-m", "policylab.data.generate.pusht", f"n={args.episodes}", f"out={data}", "seed=0"])
    run([sys.executable, "train.py", "experiment=pusht_state_cpu", f"task.dataset.zarr_path={data}",
         f"training.max_train_minutes={args.minutes}", "training.rollout_every=1000", "training.checkpoint_every=1000",
         "training.val_every=1000", "training.sample_every=1000", f"hydra.run.dir={out / 'run'}"])
    ckpt = out / "run" / "checkpoints" / "latest"
    run([sys.executable, "eval.py", "--checkpoint", str(ckpt), "--output_dir", str(out / "eval"),
         f"n_test={args.n_test}", "n_train=0", "n_test_vis=2"])
    log = json.loads((out / "eval" / "eval_log.json").read_text())
    videos = sorted(str(v) for k, v in log.items() if "video" in k)
    print(f"\nPushT test mean_score {log['test/mean_score']:.3f}, success rate {log['test/success_rate']:.2f} "
          f"over {args.n_test} seeds (a {args.minutes:g}-minute CPU run; see README for longer runs)")
    print(f"scores:     {out / 'eval' / 'eval_log.json'}")
    print(f"checkpoint: {ckpt}")
    print(f"videos:     {', '.join(videos)}")
    print(f"train log:  {out / 'run' / 'logs.jsonl'}")


if __name__ == "__main__":
    main()
