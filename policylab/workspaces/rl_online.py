"""Stage II of ConRFT (HIL-ConRFT): online fine-tuning with human interventions, learner + ray actors.

    python train.py workspace=rl_online task=pick_cube_lowdim policy.init=<Stage I checkpoint> [conrft=code]

`policy.init` names a Stage I checkpoint (actor, critic and target critic are taken, optimizers
start fresh, as ConRFT) or a supervised one (the "no Stage I" ablation: a fresh critic).

This process is the learner. `online.n_actors` ray actors (`rl.actor.EnvActor`; local ray by
default, a cluster with `online.ray_address`) each run the task's env with the simulated human
(`online.intervention`, null for none) and the latest published weights, and return finished
episodes as numpy arrays. The learner appends every episode to the online store and its intervened
segments to the demo-side store as well (both zarr stores under `<run dir>/buffers/`, so a resumed
run keeps them), and once `training.training_starts` online transitions exist runs ConRFT's
learner iterations on RLPD-style batches (`online.online_fraction` from the online store, the rest
from demos), publishing weights every `training.publish_every` iterations. An actor that dies is
restarted by ray; its unfinished episode is lost, finished ones never are (they are in the stores).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from policylab.common import checkpoint as ckpt
from policylab.common.shape_meta import ShapeMeta
from policylab.rl.actor import policy_weights
from policylab.rl.buffers import MixedSampler, OnlineReplayStore
from policylab.rl.episodes import route_episode
from policylab.workspaces.base import LoggingConfig, due, to_device
from policylab.workspaces.rl_offline import (
    CheckpointConfig,
    OfflineRLWorkspace,
    RewardConfig,
    RLTrainingConfig,
    policy_build_config,
)


@dataclasses.dataclass
class OnlineTrainingConfig(RLTrainingConfig):
    num_steps: int = 1_000_000            # learner iterations (an upper bound; env steps or time end a run)
    max_env_steps: int | None = 20_000
    training_starts: int = 100            # online transitions before the first update (ConRFT: 100)
    publish_every: int = 50               # learner iterations between weight publications (ConRFT: 50)
    # Learner iterations allowed per online env step (None: as many as the learner manages, as
    # ConRFT). A cap makes a run's update-to-data ratio independent of how fast the machine is.
    max_updates_per_env_step: float | None = None
    eval_every: int = 1_000


@dataclasses.dataclass
class OnlineConfig:
    n_actors: int = 1
    ray_address: str | None = None       # None: start ray on this machine
    num_cpus_per_actor: float = 1.0
    actor_resources: dict | None = None  # ray custom resources an actor needs, e.g. {robot: 1}
    online_fraction: float = 0.5          # RLPD: half of every batch from the online store
    max_episode_steps: int = 100
    train_start_seed: int = 0             # episode i of the run resets with seed train_start_seed + i
    intervention: dict | None = None      # InterventionWrapper kwargs; None: no simulated human
    reward_classifier: dict | None = None  # ClassifierReward kwargs + checkpoint; None: the env's reward
    actor_torch_threads: int = 1


class OnlineRLWorkspace(OfflineRLWorkspace):
    schemas: ClassVar[dict[str, type]] = {"training": OnlineTrainingConfig, "online": OnlineConfig, "reward": RewardConfig,
               "logging": LoggingConfig, "checkpoint": CheckpointConfig}
    stage = "online"

    def __init__(self, cfg, output_dir):
        super().__init__(cfg, output_dir)
        self.next_episode = 0
        self.weights_version = 0

    def init_critic(self) -> None:
        """Critic and target from a Stage I `policy.init`; a supervised init keeps a fresh critic."""
        init = self.init_path
        if init is not None and (Path(init) / "critic.safetensors").exists():
            ckpt.load_modules(init, {"critic": self.agent.critic, "target_critic": self.agent.target_critic})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "next_episode": self.next_episode, "weights_version": self.weights_version}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.next_episode = int(state["next_episode"])
        self.weights_version = int(state["weights_version"])

    def stores(self) -> tuple[OnlineReplayStore, OnlineReplayStore]:
        shape_meta, spec = ShapeMeta.parse(self.cfg.task.shape_meta), self.transition_spec()
        buffers = self.output_dir / "buffers"
        demo = OnlineReplayStore.from_demos(buffers / "demos.zarr", self.demo_replay_buffer(), shape_meta, spec)
        online = OnlineReplayStore(buffers / "online.zarr", shape_meta, spec)
        return demo, online

    def start_actors(self) -> list:
        import ray

        from policylab.rl.actor import remote_env_actor

        o = self.c["online"]
        if not ray.is_initialized():
            if o.ray_address:
                ray.init(address=o.ray_address)
            else:
                ray.init(num_cpus=max(2, int(o.n_actors * o.num_cpus_per_actor) + 1), include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
        task_cfg = OmegaConf.to_container(self.cfg.task, resolve=True)
        policy_cfg = policy_build_config(self.cfg.policy)
        intervention = None if o.intervention is None else OmegaConf.to_container(o.intervention)
        classifier = None if o.reward_classifier is None else OmegaConf.to_container(o.reward_classifier)
        resources = None if o.actor_resources is None else OmegaConf.to_container(o.actor_resources)
        actor_cls = remote_env_actor(num_cpus=o.num_cpus_per_actor, **({"resources": resources} if resources else {}))
        return [actor_cls.remote(task_cfg, policy_cfg, intervention, self.actor.n_obs_steps,
                                 self.actor.n_action_steps, o.max_episode_steps, "cpu", o.actor_torch_threads,
                                 self.embed, classifier)
                for _ in range(o.n_actors)]

    def publish(self):
        """Put the actor's weights (plain CPU tensors) in ray's object store; returns the reference."""
        import ray

        self.weights_version += 1
        t = time.perf_counter()
        ref = ray.put(policy_weights(self.actor))
        self.publish_seconds = time.perf_counter() - t
        return ref

    def run(self) -> dict[str, Any]:
        import ray

        train, o = self.c["training"], self.c["online"]
        self.resume_if_asked()  # takes the run directory first: the stores live in it
        demo, online = self.stores()
        self.next_episode = max(self.next_episode, online.n_episodes)
        mixed = MixedSampler(demo.sampler, online.sampler, o.online_fraction)
        topk = ckpt.TopKCheckpointManager(self.checkpoint_dir, self.c["checkpoint"].monitor_key,
                                          self.c["checkpoint"].mode, self.c["checkpoint"].topk,
                                          format_str="step={epoch:07d}-{monitor_key}={value:.3f}")
        logger = self.make_logger()
        actors = self.start_actors()
        weights = self.publish()
        pending: dict = {}

        def submit(actor, seed: int | None = None) -> None:
            """Start an episode on `actor`: the next seed, or `seed` again (an episode that died with its actor)."""
            if seed is None:
                seed = o.train_start_seed + self.next_episode
                self.next_episode += 1
            pending[actor.run_episode.remote(seed, weights, self.weights_version)] = (actor, seed)

        for actor in actors:
            submit(actor)
        print(f"Stage II (HIL-ConRFT) in {self.output_dir}: {len(actors)} actor(s), {demo.sampler.__len__()} demo "
              f"transitions, {online.n_episodes} online episodes so far")
        recent = collections.deque(maxlen=20)
        sample = lambda: to_device(mixed.sample(train.batch_size, self.generator), self.device)
        metrics: dict[str, Any] = {}
        restarts = 0
        bar = tqdm(total=train.max_env_steps, initial=online.n_steps, desc="hil-conrft env steps", mininterval=1.0)
        while not self._finished(online):
            can_train = online.sampler.__len__() >= train.training_starts and self._within_update_budget(online)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0 if can_train else 0.5)
            for ref in ready:
                actor, seed = pending.pop(ref)
                try:
                    episode, stats = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                    restarts += 1
                    print(f"actor failed ({type(err).__name__}); ray restarts it, episode {seed} resubmitted")
                    submit(actor, seed)
                    continue
                self._add_episode(episode, stats, demo, online)
                recent.append(stats)
                bar.update(int(stats["length"]))
                logger.log(self._episode_metrics(stats, recent, online, restarts), step=self.global_step)
                submit(actor)
            if not can_train:
                continue
            metrics = self.agent.train_step(sample, self.generator)
            self.global_step += 1
            if due(self.global_step, train.publish_every):
                weights = self.publish()
                metrics["publish_seconds"] = self.publish_seconds
            if due(self.global_step, train.log_every):
                bar.set_postfix(success=f"{_rate(recent, 'success'):.2f}", updates=self.global_step)
                logger.log({**metrics, "env_steps": online.n_steps}, step=self.global_step)
            if due(self.global_step, train.eval_every):
                logger.log(self.evaluate(), step=self.global_step)
            if due(self.global_step, train.checkpoint_every):
                self.checkpoint(topk, metrics)
        bar.close()
        try:  # a robot's devices stop cleanly; an episode still running finishes first
            ray.get([actor.close.remote() for actor in actors], timeout=60)
        except (ray.exceptions.RayError, TimeoutError) as err:
            print(f"closing the actors' envs failed ({type(err).__name__}); killing them")
        for actor in actors:
            ray.kill(actor)
        final = self.evaluate() if train.eval_at_end else {}
        final |= {"env_steps": online.n_steps, "episodes": online.n_episodes}
        logger.log(final, step=self.global_step)
        self.checkpoint(topk, {**metrics, **final})
        logger.close()
        print(f"done: {self.global_step} updates, {online.n_steps} env steps: {_summary(final)}")
        return {**metrics, **final}

    def _within_update_budget(self, online: OnlineReplayStore) -> bool:
        ratio = self.c["training"].max_updates_per_env_step
        return ratio is None or self.global_step < ratio * online.n_steps

    def _finished(self, online: OnlineReplayStore) -> bool:
        train = self.c["training"]
        return (self.global_step >= train.num_steps or self.over_time_budget()
                or (train.max_env_steps is not None and online.n_steps >= train.max_env_steps))

    @staticmethod
    def _add_episode(episode: dict, stats: dict, demo: OnlineReplayStore, online: OnlineReplayStore) -> None:
        """Every step to the online store; intervened segments to the demo side too (ConRFT)."""
        to_online, segments = route_episode(episode)
        online.add_episode(to_online, name=f"actor {stats.get('actor_pid')}")
        for segment in segments or []:
            demo.add_episode(segment, name="intervention")

    @staticmethod
    def _episode_metrics(stats: dict, recent, online: OnlineReplayStore, restarts: int) -> dict:
        return {"episode/success": float(stats["success"]), "episode/length": stats["length"],
                "episode/intervention_rate": stats["intervention_rate"],
                "episode/return": stats["return"], "rollout/success_rate_20": _rate(recent, "success"),
                "rollout/intervention_rate_20": _rate(recent, "intervention_rate"),
                "env_steps": online.n_steps, "episodes": online.n_episodes, "actor_restarts": restarts,
                "episode/weights_version": stats.get("weights_version", 0)}


def _rate(recent, key: str) -> float:
    return float(np.mean([float(s[key]) for s in recent])) if recent else 0.0


def _summary(metrics: dict) -> str:
    keys = ("test/success_rate", "test/mean_score")
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics) or "no evaluation"

