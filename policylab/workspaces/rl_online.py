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
from typing import ClassVar

import numpy as np
from omegaconf import OmegaConf

from policylab.common import checkpoint as ckpt
from policylab.common.shape_meta import ShapeMeta
from policylab.rl.actor import policy_weights
from policylab.rl.buffers import MixedSampler, OnlineReplayStore
from policylab.rl.episodes import route_episode
from policylab.workspaces.base import CheckpointConfig, LoggingConfig, to_device
from policylab.workspaces.rl import (
    RewardConfig,
    RLTrainingConfig,
    RLWorkspace,
    policy_build_config,
)


@dataclasses.dataclass
class OnlineTrainingConfig(RLTrainingConfig):
    max_env_steps: int | None
    training_starts: int
    publish_every: int
    max_updates_per_env_step: float | None


@dataclasses.dataclass
class OnlineConfig:
    n_actors: int
    ray_address: str | None
    num_cpus_per_actor: float
    actor_resources: dict | None
    online_fraction: float
    max_episode_steps: int
    train_start_seed: int
    intervention: dict | None
    reward_classifier: dict | None
    actor_torch_threads: int


class ActorPool:
    """The ray actors that run episodes for the learner: start, submit, collect, restart, publish.

    Each actor always has one episode running. `collect` returns the finished ones; an actor that
    died is restarted by ray and its episode (same seed) submitted again; `publish` puts new
    weights in ray's object store for every later episode. Episode i resets with seed
    `train_start_seed + i`; `next_episode` is saved with the learner's state. Actors run only on
    nodes that offer `online.actor_resources` (checked first: ray would wait forever for a node
    that never joins); each episode's stats name its node (`node_id`, `host`).
    """

    def __init__(self, o: OnlineConfig, actor_args: tuple, next_episode: int, say):
        import ray

        if not ray.is_initialized():
            if o.ray_address:
                ray.init(address=o.ray_address)
            else:
                ray.init(num_cpus=max(2, int(o.n_actors * o.num_cpus_per_actor) + 1), include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
        from policylab.distributed.placement import check_actor_placement
        from policylab.rl.actor import remote_env_actor

        resources = None if o.actor_resources is None else OmegaConf.to_container(o.actor_resources)
        check_actor_placement(ray.nodes(), {"CPU": o.num_cpus_per_actor, **(resources or {})}, o.n_actors)
        actor_cls = remote_env_actor(num_cpus=o.num_cpus_per_actor, **({"resources": resources} if resources else {}))
        self.actors = [actor_cls.remote(*actor_args) for _ in range(o.n_actors)]
        self.first_seed, self.next_episode, self.say = o.train_start_seed, next_episode, say
        self.pending: dict = {}
        self.weights, self.weights_version, self.restarts, self.publish_seconds = None, 0, 0, 0.0
        self.refused = 0  # episodes whose actor raised: never stored
        self.down: list = []  # actors that failed and have not finished an episode since

    def publish(self, policy, version: int) -> None:
        """Put the policy's weights (plain CPU tensors) in ray's object store as `version`."""
        import ray

        t = time.perf_counter()
        self.weights, self.weights_version = ray.put(policy_weights(policy)), version
        self.publish_seconds = time.perf_counter() - t

    def submit(self, actor, seed: int | None = None) -> None:
        """Start an episode on `actor`: the next seed, or `seed` again (an episode that died with its actor)."""
        if seed is None:
            seed = self.first_seed + self.next_episode
            self.next_episode += 1
        self.pending[actor.run_episode.remote(seed, self.weights, self.weights_version)] = (actor, seed)

    def start(self) -> None:
        for actor in self.actors:
            self.submit(actor)

    def collect(self, timeout: float) -> list[tuple[dict, dict]]:
        """The episodes that finish within `timeout` seconds (0: those already done), each actor
        given its next episode."""
        import ray

        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            actor, seed = self.pending.pop(ref)
            try:
                done.append(ray.get(ref))
            except ray.exceptions.RayActorError as err:  # died, or unavailable while ray restarts it
                if actor not in self.down:  # one restart per outage: ActorUnavailableError repeats every ~2 s
                    self.down.append(actor)
                    self.restarts += 1
                    self.say(f"actor failed ({type(err).__name__}); ray restarts it, episode {seed} resubmitted")
                self.submit(actor, seed)
                continue
            except ray.exceptions.RayTaskError as err:  # the episode raised (a NaN action...): refused, not retried,
                self.refused += 1                        # since the same seed would fail the same way
                self.say(f"episode {seed} refused: {type(err.cause).__name__}: {err.cause}")
            if actor in self.down:
                self.down.remove(actor)
            self.submit(actor)
        return done

    def close(self) -> None:
        """Stop the actors' envs (a robot's devices stop cleanly; a running episode finishes first), then the actors."""
        import ray

        try:
            ray.get([actor.close.remote() for actor in self.actors], timeout=60)
        except (ray.exceptions.RayError, TimeoutError) as err:
            self.say(f"closing the actors' envs failed ({type(err).__name__}); killing them")
        for actor in self.actors:
            ray.kill(actor)


class OnlineRLWorkspace(RLWorkspace):
    schemas: ClassVar[dict[str, type]] = {"training": OnlineTrainingConfig, "online": OnlineConfig,
                                          "reward": RewardConfig, "logging": LoggingConfig,
                                          "checkpoint": CheckpointConfig}
    stage = "online"

    def __init__(self, cfg, output_dir):
        super().__init__(cfg, output_dir)
        self.next_episode = 0
        self.weights_version = 0
        self.refused = 0  # episodes the learner refused (the actors' count is the pool's)
        self.pool: ActorPool | None = None
        self.recent = collections.deque(maxlen=20)  # stats of the last 20 episodes

    def init_critic(self) -> None:
        """Critic and target from a Stage I `policy.init`; a supervised init keeps a fresh critic."""
        init = self.init_path
        if init is not None and (Path(init) / "critic.safetensors").exists():
            ckpt.load_modules(init, {"critic": self.agent.critic, "target_critic": self.agent.target_critic})

    def state_dict(self) -> dict:
        next_episode = self.pool.next_episode if self.pool is not None else self.next_episode
        return {**super().state_dict(), "next_episode": next_episode, "weights_version": self.weights_version}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.next_episode = int(state["next_episode"])
        self.weights_version = int(state["weights_version"])

    def build(self) -> None:
        """The demo-side and online stores (zarr, in the run directory: a resumed run keeps them)."""
        shape_meta, spec = ShapeMeta.parse(self.cfg.task.shape_meta), self.transition_spec()
        buffers = self.output_dir / "buffers"
        self.demo = OnlineReplayStore.from_demos(buffers / "demos.zarr", self.demo_replay_buffer(), shape_meta, spec)
        self.online = OnlineReplayStore(buffers / "online.zarr", shape_meta, spec)
        self.mixed = MixedSampler(self.demo.sampler, self.online.sampler, self.c["online"].online_fraction)

    def start(self) -> None:
        o = self.c["online"]
        intervention = None if o.intervention is None else OmegaConf.to_container(o.intervention)
        classifier = None if o.reward_classifier is None else OmegaConf.to_container(o.reward_classifier)
        args = (OmegaConf.to_container(self.cfg.task, resolve=True), policy_build_config(self.cfg.policy),
                intervention, self.actor.n_obs_steps, self.actor.n_action_steps, o.max_episode_steps, "cpu",
                o.actor_torch_threads, self.embed, classifier)
        self.pool = ActorPool(o, args, max(self.next_episode, self.online.n_episodes), self.say)
        self.publish()
        self.pool.start()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def publish(self) -> None:
        self.weights_version += 1
        self.pool.publish(self.actor, self.weights_version)

    def describe(self) -> str:
        return (f"Stage II (HIL-ConRFT) on {self.device}: {len(self.pool.actors)} actor(s), "
                f"{len(self.demo.sampler)} demo transitions, {self.online.n_episodes} online episodes so far")

    def finished(self) -> bool:
        max_env_steps = self.c["training"].max_env_steps
        return super().finished() or (max_env_steps is not None and self.online.n_steps >= max_env_steps)

    def train_step(self) -> dict | None:
        """Store the episodes the actors finished; then one learner iteration, once there are
        `training_starts` online transitions and the update-to-data cap allows (None otherwise)."""
        train = self.c["training"]
        ratio = train.max_updates_per_env_step
        can_train = (len(self.online.sampler) >= train.training_starts
                     and (ratio is None or self.global_step < ratio * self.online.n_steps))
        self.receive(self.pool.collect(timeout=0 if can_train else 0.5))
        if not can_train:
            return None
        metrics = self.agent.train_step(
            lambda: to_device(self.mixed.sample(train.batch_size, self.generator), self.device), self.generator)
        self.global_step += 1
        if self.global_step % train.publish_every == 0:
            self.publish()
            metrics["publish_seconds"] = self.pool.publish_seconds
        return {**metrics, "env_steps": self.online.n_steps, "episodes": self.online.n_episodes,
                "rollout/success_rate_20": _rate(self.recent, "success")}

    def receive(self, finished: list[tuple[dict, dict]]) -> None:
        """Store each finished episode; one that breaks the store's contract (NaN features...) is
        refused with its reason and the run goes on (nothing of it is written)."""
        for episode, stats in finished:
            try:
                self._add_episode(episode, stats)
            except ValueError as err:
                self.refused += 1
                self.say(f"episode refused: {err}")

    def _add_episode(self, episode: dict, stats: dict) -> None:
        """Every step to the online store; intervened segments to the demo side too (ConRFT)."""
        to_online, segments = route_episode(self.with_trunk_features(episode))
        self.online.add_episode(to_online, name=f"actor {stats.get('actor_pid')} on {stats.get('host')}")
        for segment in segments or []:
            self.demo.add_episode(segment, name="intervention")
        self.recent.append(stats)
        self.logger.log({"episode/success": float(stats["success"]), "episode/length": stats["length"],
                         "episode/intervention_rate": stats["intervention_rate"],
                         "episode/return": stats["return"], "rollout/success_rate_20": _rate(self.recent, "success"),
                         "rollout/intervention_rate_20": _rate(self.recent, "intervention_rate"),
                         "env_steps": self.online.n_steps, "episodes": self.online.n_episodes,
                         "actor_restarts": self.pool.restarts, "episodes_refused": self.pool.refused + self.refused,
                         "episode/weights_version": stats.get("weights_version", 0),
                         "episode/node_id": stats.get("node_id"), "episode/host": stats.get("host")},
                        step=self.global_step)

    def line_items(self, metrics: dict) -> list[str]:
        return [f"env steps {self.online.n_steps}", f"success_20 {_rate(self.recent, 'success'):.2f}",
                *super().line_items(metrics)]


def _rate(recent, key: str) -> float:
    return float(np.mean([float(s[key]) for s in recent])) if recent else 0.0
