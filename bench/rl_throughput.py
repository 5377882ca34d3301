"""ConRFT throughput on pick-cube, state and images: learner updates, actor env steps, weight publishing.

    python bench/rl_throughput.py [--seconds 20] [--rounds 4] [--batch_size 256] [--image_rounds 1]
                                  [--out <json>]   (default: <bench root>/results/rl_throughput.json)

Three measurements, each comparing its variants side by side in rounds (on a shared machine,
load changes hit every variant alike):

  learner  one learner iteration (`ConRFT.train_step`: critic_actor_ratio = 2 updates, each on a
           fresh batch of `--batch_size` transitions) for Stage I (Cal-QL: 30 candidate actions
           per state) and Stage II (plain TD), with 1 and 2 torch threads, on state obs (ConRFT's
           MLP actor) and on images (2 cameras 96x96 + proprio; the actor's Octo-tiny encoder is
           frozen, so batches carry its stored embeddings) with two critics side by side:
           "trained R18", the critic's own ResNet18-GroupNorm run and trained on every batch after
           the random shift (`critic_trunk=trained_resnet18`, the path before issue 23), and
           "cached R10", ConRFT's frozen ResNet-10 trunk whose features were computed once per
           frame and stored, so an update runs only the head (`critic_trunk=resnet10`; random
           weights here, as fast as ImageNet's), and "cached SFT stems", the frozen Octo-tiny's
           camera stems as the trunk (`critic_trunk=sft`), and the same with the image presets' actor,
           whose trained head also reads those cached stems ("+ actor head", `policy.image_head`).
           Reported: updates/s and the share of time spent
           sampling batches. A round always runs one iteration after a warm-up one, however long
           it takes; the trained-R18 learners run in the first `--image_rounds` rounds.
  trunk    the cost of caching, per cached critic: ms per frame for the learner to compute a
           frame's trunk features when its episode arrives (1 thread, batches of 64 frames), and
           the storage of the float16 features per 1,000 transitions (2 cameras).
  actor    `rl.actor.run_episode` of the ConRFT actor (untrained weights) in the env: state obs
           without and with the simulated human (`envs/interventions.py`, the Stage II default),
           and images with the Octo-tiny embedding recorded on every step, without and with the
           actor's image head (its stems run on the frame each step). Reported: env steps/s
           and the share of time in the policy (and the embedding).
  publish  the learner's weight hand-off: `policy_weights` + `ray.put`, and the round trip of
           `EnvActor.set_weights` on a local ray actor (what an actor pays once per new version).

Demonstrations come from the project's scripted expert (10 episodes with images, generated into a
temporary directory). Prints a table last, writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench._paths import add_out_argument, write_json
from policylab.common.checkpoint import save_checkpoint
from policylab.common.config import compose
from policylab.common.shape_meta import ShapeMeta
from policylab.data.generate.__main__ import main as generate
from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.actor import (
    POLICY_EMBEDDING,
    EnvActor,
    make_actor_env,
    policy_weights,
    run_episode,
)
from policylab.rl.transitions import TransitionSampler
from policylab.rl.trunk_features import (
    episode_trunk_features,
    megabytes_per_1k_transitions,
)

# ConRFT and the RL workspaces import diffusers (over a second): imported where they are used, so that
# importing this script (tests/test_bench_outputs.py) stays cheap
if TYPE_CHECKING:
    from policylab.workspaces.rl_offline import OfflineRLWorkspace

OCTO = ["policy/obs_encoder=octo_tiny", "policy.obs_encoder.frozen=true"]
# The image critics compared; "sft" reads the frozen Octo's stems from a checkpoint of the actor.
# "+ actor head": the image presets' actor, which also reads those stems' cached maps through its
# trained head (policy.image_head, as config/experiment/conrft_pick_cube_image_stage2.yaml).
HEAD = ("+policy.image_head._target_=policylab.policies.image_head.StemImageHead", "+policy.image_head._partial_=true",
        "+policy.image_head.feature_dim=64")
IMAGE_CRITICS = {"trained R18": ("critic_trunk=trained_resnet18",), "cached R10": ("critic_trunk=resnet10",),
                 "cached SFT stems": ("critic_trunk=sft",), "cached SFT stems + actor head": ("critic_trunk=sft", *HEAD)}


I, II = "I (Cal-QL)", "II (TD)"
LEARNER_RATIOS = {  # name: (numerator, denominator) as (obs, stage, threads)
    "state: stage II / stage I (1 thread)": (("state", II, 1), ("state", I, 1)),
    "state: 2 threads / 1 thread (stage I)": (("state", I, 2), ("state", I, 1)),
    "image trained R18 / state (stage II, 1 thread)": (("image, trained R18", II, 1), ("state", II, 1)),
    **{f"image {critic} / trained R18 (stage {stage}, 1 thread)":
       ((f"image, {critic}", stage_key, 1), ("image, trained R18", stage_key, 1))
       for critic in ("cached R10", "cached SFT stems") for stage, stage_key in (("I", I), ("II", II))},
    **{f"image SFT stems + actor head / without (stage {stage}, 1 thread)":
       (("image, cached SFT stems + actor head", stage_key, 1), ("image, cached SFT stems", stage_key, 1))
       for stage, stage_key in (("I", I), ("II", II))},
}


def compose_cfg(store: Path, workspace: str, task: str = "pick_cube_lowdim", extra: tuple = ()):
    return compose([f"workspace={workspace}", f"task={task}", "policy=conrft_actor", f"task.dataset.zarr_path={store}",
                    "task.dataset.val_ratio=0", "logging.mode=disabled", *extra], config_dir=REPO / "config",
                   resolve=True)


class Learner:
    """One ConRFT agent (a stage's loss weights) and its sampler; times `train_step`."""

    def __init__(self, ws: OfflineRLWorkspace, stage: str, threads: int, batch_size: int):
        from policylab.rl.conrft import ConRFT, ConRFTConfig

        cfg = ws.cfg
        torch.manual_seed(0)
        stage_cfg = {**OmegaConf.to_container(cfg.conrft.common), **OmegaConf.to_container(cfg.conrft[stage])}
        critic = hydra.utils.instantiate(cfg.critic)(  # a fresh critic per variant
            shape_meta=OmegaConf.to_container(cfg.task.shape_meta, resolve=True), n_obs_steps=ws.actor.n_obs_steps,
            action_dim=ws.actor.n_action_steps * ws.actor.action_dim)
        self.agent = ConRFT(ws.actor, critic, ConRFTConfig(**stage_cfg))
        self.agent.stems_from_trunk = ws.agent.stems_from_trunk  # the actor head's maps: the critic's cached ones
        self.sampler = TransitionSampler(ws.demo_replay_buffer(), ShapeMeta.parse(cfg.task.shape_meta),
                                         ws.transition_spec())
        self.generator = torch.Generator().manual_seed(0)
        self.threads, self.batch_size = threads, batch_size
        self.ratio = self.agent.cfg.critic_actor_ratio
        self.rounds: list[tuple[int, float, float]] = []  # (iterations, seconds, sampling seconds)

    def run(self, seconds: float) -> float:
        torch.set_num_threads(self.threads)
        sample_s = 0.0

        def sample():
            nonlocal sample_s
            tic = time.perf_counter()
            batch = self.sampler.sample(self.batch_size, self.generator)
            sample_s += time.perf_counter() - tic
            return batch

        self.agent.train_step(sample, self.generator)  # warm-up, not timed
        sample_s, n, start = 0.0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.agent.train_step(sample, self.generator)
            n += 1
        spent = time.perf_counter() - start
        self.rounds.append((n, spent, sample_s))
        return n * self.ratio / spent

    def summary(self) -> dict:
        n, wall, sample = (sum(r[i] for r in self.rounds) for i in range(3))
        return {"iterations": n, "seconds": wall, "updates_per_s": n * self.ratio / wall,
                "iterations_per_s": n / wall, "sample_share": sample / wall,
                "round_updates_per_s": [r[0] * self.ratio / r[1] for r in self.rounds]}


class Actor:
    """`run_episode` over seeded episodes; counts env steps and policy time."""

    def __init__(self, ws: OfflineRLWorkspace, intervention: dict | None, embed: bool = False):
        self.env = make_actor_env(ws.cfg.task, intervention)
        self.policy = ws.actor
        # as EnvActor(embed=True): the frozen encoder's features recorded on every step, its pass shared with the action
        self.embed = POLICY_EMBEDDING if embed else None
        self.max_steps = int(ws.cfg.task.env_runner.max_steps)
        self.seed = 0
        self.rounds: list[tuple[int, float, float, float]] = []  # (steps, seconds, policy s, intervened steps)

    def run(self, seconds: float) -> float:
        torch.set_num_threads(1)
        steps, spent, policy_s, intervened = 0, 0.0, 0.0, 0
        while spent < seconds:
            _, stats = run_episode(self.policy, self.env, self.seed, self.policy.n_obs_steps,
                                   self.policy.n_action_steps, self.max_steps, embed=self.embed)
            self.seed += 1
            steps += stats["length"]
            spent += stats["wall_s"]
            policy_s += stats["policy_s"]
            intervened += stats["n_intervened_steps"]
        self.rounds.append((steps, spent, policy_s, intervened))
        return steps / spent

    def summary(self) -> dict:
        steps, wall, policy_s, intervened = (sum(r[i] for r in self.rounds) for i in range(4))
        return {"env_steps": steps, "seconds": wall, "env_steps_per_s": steps / wall,
                "policy_share": policy_s / wall, "intervention_rate": intervened / steps,
                "round_env_steps_per_s": [r[0] / r[1] for r in self.rounds]}


def trunk_cost(ws: OfflineRLWorkspace, store: Path, repeats: int = 3) -> dict:
    """What caching costs: the learner's trunk pass per arriving frame, and the features' storage."""
    torch.set_num_threads(1)
    encoder = ws.agent.critic.encoder
    episode = ReplayBuffer.copy_from_path(store).get_episode(0, copy=True)
    meta = ShapeMeta.parse(ws.cfg.task.shape_meta)
    episode_trunk_features(encoder, episode, meta)  # warm-up
    tic = time.perf_counter()
    for _ in range(repeats):
        episode_trunk_features(encoder, episode, meta)
    per_step = (time.perf_counter() - tic) / repeats / len(episode["action"])
    cameras = len(encoder.cached_keys)
    return {"ms_per_frame": 1e3 * per_step / cameras, "ms_per_env_step": 1e3 * per_step, "cameras": cameras,
            "mb_per_1k_transitions": megabytes_per_1k_transitions(encoder),
            "feature_shape": list(encoder.image_encoders[encoder.cached_keys[0]].feature_shape)}


def publish_latency(ws: OfflineRLWorkspace, repeats: int) -> dict:
    import ray

    from policylab.workspaces.rl_offline import policy_build_config

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        policy_cfg = policy_build_config(ws.cfg.policy)
        actor = ray.remote(num_cpus=1)(EnvActor).remote(
            OmegaConf.to_container(ws.cfg.task, resolve=True), policy_cfg, None, ws.actor.n_obs_steps,
            ws.actor.n_action_steps, 10)
        put_ms, round_trip_ms = [], []
        for version in range(repeats + 1):
            tic = time.perf_counter()
            ref = ray.put(policy_weights(ws.actor))
            put = time.perf_counter() - tic
            ray.get(actor.set_weights.remote(ref, version))
            if version:  # the first call also starts the actor process
                put_ms.append(1e3 * put)
                round_trip_ms.append(1e3 * (time.perf_counter() - tic))
        size = sum(t.numel() * t.element_size() for t in policy_weights(ws.actor).values())
        return {"weights_kb": size / 1024, "put_ms_median": statistics.median(put_ms),
                "set_weights_round_trip_ms_median": statistics.median(round_trip_ms), "repeats": repeats}
    finally:
        ray.shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per variant")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--image_rounds", type=int, default=1,
                        help="rounds that include the trained-R18 image learners (tens of seconds per update at "
                             "batch 256; 0: none)")
    parser.add_argument("--publish_repeats", type=int, default=20)
    add_out_argument(parser, "rl_throughput")
    return parser


def main():
    from policylab.workspaces.rl_offline import OfflineRLWorkspace, policy_build_config

    args = build_parser().parse_args()
    load_start = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "pick_cube.zarr"
        generate(["task=pick_cube_lowdim", "n=10", "images=true", f"out={store}"])
        ws = OfflineRLWorkspace(compose_cfg(store, "rl_offline"), Path(tmp) / "run")
        image_wss, sft = {}, Path(tmp) / "sft"
        for name, overrides in IMAGE_CRITICS.items():
            extra = (*OCTO, *overrides, *([f"policy.init={sft}"] if "critic_trunk=sft" in overrides else []))
            image_wss[f"image, {name}"] = OfflineRLWorkspace(
                compose_cfg(store, "rl_offline", "pick_cube_image", extra), Path(tmp) / name.replace(" ", "_"))
            if len(image_wss) == 1:  # the first one's actor stands in for an SFT checkpoint
                first = image_wss[f"image, {name}"]
                sft_cfg = OmegaConf.create({**OmegaConf.to_container(first.cfg, resolve=True),
                                            "policy": policy_build_config(first.cfg.policy)})
                save_checkpoint(sft, sft_cfg, first.actor)
        image_ws = image_wss["image, trained R18"]
        learners = {(obs, stage, threads): Learner(w, stage, threads, args.batch_size)
                    for obs, w in (("state", ws), *image_wss.items())
                    for stage in ("offline", "online") for threads in (1, 2)}
        trunk = {name: trunk_cost(w, store) for name, w in image_wss.items() if "cached" in name and "head" not in name}
        intervention = OmegaConf.to_container(compose_cfg(store, "rl_online").online.intervention)
        actors = {"state, policy only": Actor(ws, None), "state, simulated human": Actor(ws, intervention),
                  "image (Octo-tiny), policy only": Actor(image_ws, None, embed=True),
                  "image + head, policy only": Actor(image_wss["image, cached SFT stems + actor head"], None, embed=True)}
        per_round = args.seconds / args.rounds
        for r in range(args.rounds):
            rates = {f"learner {obs} {stage}/{threads}t": learner.run(per_round)
                     for (obs, stage, threads), learner in learners.items()
                     if "trained" not in obs or r < args.image_rounds}
            rates.update({f"actor {name}": actor.run(per_round) for name, actor in actors.items()})
            print(f"round {r + 1}/{args.rounds} (load {os.getloadavg()[0]:.2f}): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()), flush=True)
        publish = publish_latency(ws, args.publish_repeats)
        for actor in actors.values():
            actor.env.close()
    load_end = os.getloadavg()

    learner_rows = [{"obs": obs, "stage": {"offline": I, "online": II}[stage],
                     "torch_threads": threads, **learner.summary()}
                    for (obs, stage, threads), learner in learners.items() if learner.rounds]
    actor_rows = [{"variant": name, **actor.summary()} for name, actor in actors.items()]
    speed = {(r["obs"], r["stage"], r["torch_threads"]): r["updates_per_s"] for r in learner_rows}
    env_speed = {r["variant"]: r["env_steps_per_s"] for r in actor_rows}
    ratios = {name: speed[num] / speed[den] for name, (num, den) in LEARNER_RATIOS.items()
              if num in speed and den in speed}
    ratios.update({"actor: simulated human / policy only":
                   env_speed["state, simulated human"] / env_speed["state, policy only"],
                   "actor: image / state": env_speed["image (Octo-tiny), policy only"] / env_speed["state, policy only"]})
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "learner": learner_rows,
              "actor": actor_rows, "publish": publish, "trunk": trunk, "ratios": ratios,
              "loadavg_start": load_start, "loadavg_end": load_end, "cpu_count": os.cpu_count(),
              "torch": torch.__version__}
    write_json(args.out, result)

    print(f"\nConRFT throughput on pick-cube, batch {args.batch_size} (load {load_start[0]:.2f} -> "
          f"{load_end[0]:.2f}, {os.cpu_count()} CPUs); image: 2 cameras 96x96, frozen Octo-tiny actor encoder "
          "(stored embeddings); critic: trained R18 = ResNet18-GroupNorm trained every batch, cached R10 = "
          "frozen ResNet-10 features stored once per frame")
    print(f"{'learner':<48}{'updates/s':>12}{'sampling':>10}")
    for r in learner_rows:
        print(f"{r['obs'] + ', stage ' + r['stage'] + ', ' + str(r['torch_threads']) + ' thr':<48}"
              f"{r['updates_per_s']:>12.2f}{r['sample_share']:>10.1%}")
    print(f"{'actor':<34}{'env steps/s':>12}{'policy':>10}{'intervened':>12}")
    for r in actor_rows:
        print(f"{r['variant']:<34}{r['env_steps_per_s']:>12.1f}{r['policy_share']:>10.1%}"
              f"{r['intervention_rate']:>12.1%}")
    print(f"publish: {publish['weights_kb']:.0f} KB of weights, ray.put {publish['put_ms_median']:.2f} ms, "
          f"set_weights round trip {publish['set_weights_round_trip_ms_median']:.1f} ms (medians of "
          f"{publish['repeats']})")
    for name, cost in trunk.items():
        print(f"trunk features, {name}: {cost['ms_per_frame']:.1f} ms per 96x96 frame (1 thread), "
              f"{cost['ms_per_env_step']:.1f} ms per env step ({cost['cameras']} cameras), "
              f"{cost['mb_per_1k_transitions']:.1f} MB per 1,000 transitions (float16 {cost['feature_shape']})")
    for name, value in ratios.items():
        print(f"ratio {name}: {value:.2f}")


if __name__ == "__main__":
    main()
