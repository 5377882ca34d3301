"""The faults of Stage II's image pipeline, as test_rl_workspaces.py runs them for state: an actor
killed mid-run is restarted and episodes keep arriving; the learner killed and resumed continues
(its step count, its stores, the cached trunk features of every stored frame); an episode with a
NaN camera frame, embedding or trunk feature is refused and nothing is written.

The run is the image presets' pipeline shrunk: pick-cube's two cameras at 32x32, ConRFT's actor on
a frozen Octo-tiny (its embeddings recorded by the actor), the critic's frozen ResNet-10 trunk
(random, seeded: the same in every process) whose features the learner stores on arrival."""

import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from policylab.common.checkpoint import load_config, load_training_state
from policylab.common.logging import read_logs
from policylab.common.safe_config import instantiate_trusted
from policylab.common.shape_meta import ShapeMeta
from policylab.data.generate import demos
from policylab.data.generate.common import open_demo_store, seed_row
from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.actor import POLICY_EMBEDDING, make_actor_env, run_episode
from policylab.rl.episodes import to_store
from policylab.rl.trunk_features import episode_trunk_features
from policylab.workspaces.rl_online import OnlineRLWorkspace
from tests.helpers import (
    RL_ENV,
    TrainProcess,
    compose_config,
    descendants_named,
    run_train,
    task_overrides,
)

pytestmark = pytest.mark.filterwarnings("ignore:FrozenTrunkEncoder. no trunk_weights")  # the random trunk: on purpose

SIZE = 32
CAMERAS = ("front", "wrist")
SMALL = [f"task.env_runner.env_kwargs.image_size={SIZE}",
         *(f"task.shape_meta.obs.{cam}.shape=[3,{SIZE},{SIZE}]" for cam in CAMERAS)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two scripted-expert episodes of the image task at 32x32 (the generator's images are 96x96)."""
    task = compose_config(["task=pick_cube_image", *SMALL]).task
    env, expert = demos.build(demos.DemoConfig(task="pick_cube_image", n=2, images=True), task)
    out = tmp_path_factory.mktemp("data") / "pick_cube_32.zarr"
    buffer, _ = open_demo_store(out)
    try:
        for seed in range(20):
            episode = demos.run_episode(env, expert, seed, 100)
            if episode is not None:
                buffer.add_episode(episode, episode_meta=seed_row(seed))
            if buffer.n_episodes == 2:
                break
    finally:
        buffer.close()
        env.close()
    return out


def overrides(store, run_dir, *extra) -> list[str]:
    return task_overrides(
        "pick_cube_image", store, run_dir, *SMALL, "workspace=rl_online", "debug=tiny_rl", "policy=conrft_actor",
        "policy/obs_encoder=octo_tiny", "policy.freeze_encoder=true", "critic_trunk=resnet10", "horizon=2",
        "n_obs_steps=2", "n_action_steps=1", "training.batch_size=8", "training.num_steps=100000",
        "training.training_starts=4", "training.publish_every=2", "training.checkpoint_every=3",
        "training.eval_at_end=false", "training.max_train_minutes=5", "task.env_runner.max_steps=8",
        "online.intervention.takeover_steps=3",
        "training.max_updates_per_env_step=1",  # the learner leaves the CPU to the actor between episodes
        *extra)


@pytest.fixture(scope="module")
def killed(store, tmp_path_factory):
    """A Stage II run whose actor is killed mid-run, then the learner itself (SIGKILL, no clean-up)."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    args = overrides(store, run_dir, "training.max_env_steps=400")
    learner = TrainProcess(args, run_dir.parent / "learner.log", env_extra=RL_ENV)
    try:
        learner.wait_for(lambda: learner.episodes() >= 2, "two episodes")
        actors = descendants_named(learner.pid, "ray::EnvActor")
        assert actors, "no ray actor process found"
        os.kill(actors[0], signal.SIGKILL)
        learner.wait_for(lambda: learner.episodes(after_restart=True) >= 2, "two episodes after the restart")
        learner.wait_for(lambda: (run_dir / "checkpoints" / "latest" / "config.yaml").exists(), "a checkpoint")
    finally:
        learner.kill()
    return {"run_dir": run_dir, "args": args}


def stores(run_dir) -> dict[str, ReplayBuffer]:
    return {name: ReplayBuffer.copy_from_path(run_dir / "buffers" / f"{name}.zarr") for name in ("online", "demos")}


def test_killed_actor_is_restarted_and_episodes_keep_arriving(killed):
    run_dir = killed["run_dir"]
    episodes = [r for r in read_logs(run_dir / "logs.jsonl") if "episode/success" in r]
    after = [r for r in episodes if r["actor_restarts"] >= 1]
    assert len(after) >= 2 and len(episodes) > len(after)
    assert all(r["episode/weights_version"] > 1 for r in after)  # weights published since reach the restarted actor
    online = stores(run_dir)["online"]
    # an episode is stored before it is logged: a kill between the two leaves one more stored
    assert online.n_episodes >= len(episodes)
    assert online["embedding"].shape[0] == online.n_steps and np.isfinite(online["embedding"]).all()


def test_killed_learner_resumes_with_its_stores_and_trunk_features(killed):
    run_dir, args = killed["run_dir"], killed["args"]
    step = load_training_state(run_dir / "checkpoints" / "latest")["global_step"]
    first = stores(run_dir)
    more = first["online"].n_steps + 16  # two more 8-step episodes
    resumed = run_train(args[:-1] + [f"training.max_env_steps={more}", "training.checkpoint_every=1000",
                                     "training.resume=true"], env_extra=RL_ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {step}," in resumed.stdout
    updates = [r["global_step"] for r in read_logs(run_dir / "logs.jsonl") if "critic_loss" in r]
    assert updates == list(range(1, len(updates) + 1)) and updates[-1] > step  # counted on, none twice
    now = stores(run_dir)
    assert now["online"].n_steps >= more
    for name, old in first.items():
        new = now[name]
        assert new.n_episodes >= old.n_episodes
        for key in sorted(old.keys()):  # the episodes before the kill, unchanged
            np.testing.assert_array_equal(new[key][: old.n_steps], old[key], err_msg=f"{name}/{key}")
    # every stored frame has its trunk features, the ones the critic's frozen trunk gives its image
    cfg = load_config(run_dir / "checkpoints" / "latest")
    meta = ShapeMeta.parse(cfg.task.shape_meta)
    critic = instantiate_trusted(cfg.critic, "critic")(
        shape_meta=OmegaConf.to_container(cfg.task.shape_meta), n_obs_steps=2, action_dim=4)
    for name, buffer in now.items():
        frames = {cam: buffer[cam] for cam in CAMERAS}
        want = episode_trunk_features(critic.encoder, frames, meta)
        for cam in CAMERAS:
            got = buffer[f"trunk_{cam}"]
            assert got.shape[0] == buffer.n_steps and got.dtype == np.float16, (name, cam)
            np.testing.assert_allclose(got.astype(np.float32), want[f"trunk_{cam}"].astype(np.float32),
                                       atol=2e-3, err_msg=f"{name}/trunk_{cam}")


@pytest.fixture
def learner(store, tmp_path):
    """This run's learner built in this process, without actors: its stores (demos with their
    embeddings and trunk features), actor and critic."""
    run_dir = tmp_path / "run"
    cfg = compose_config([o for o in overrides(store, run_dir) if not o.startswith("hydra.")])
    OmegaConf.resolve(cfg)  # as train.py does
    workspace = OnlineRLWorkspace(cfg, run_dir)
    workspace.start_run()
    try:
        workspace.build()
        yield workspace
    finally:
        workspace.end_run()


class NaNFrame(gym.Wrapper):
    """Camera `key` gives NaN pixels from env step `at` on (a camera or renderer fault)."""

    def __init__(self, env, key: str, at: int):
        super().__init__(env)
        self.key, self.at, self.t = key, at, 0

    def reset(self, **kwargs):
        self.t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, *rest = self.env.step(action)
        self.t += 1
        if self.t >= self.at:
            obs = {**obs, self.key: np.full_like(obs[self.key], np.nan)}
        return obs, *rest


HUMAN = {"deviation_threshold": 0.0, "patience": 1, "takeover_steps": 3}  # takes over at once: intervened steps


def test_store_format_refuses_a_nan_frame_and_clips_rounding():
    space = gym.spaces.Dict({"front": gym.spaces.Box(0, 1, (3, 2, 2), np.float32)})
    frame = np.full((3, 2, 2), 1.003, np.float32)  # a rounding error past 1: 256 would wrap to 0 in uint8
    assert (to_store({"front": frame}, space)["front"] == 255).all()
    frame[1, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"observation 'front' holds non-finite values \(NaN/inf\) at 1 pixels"):
        to_store({"front": frame}, space)


def test_nan_camera_frame_ends_the_episode_at_the_actor(learner):
    """The frame reaches the policy before the recorder: the NaN action it gives ends the episode,
    which never reaches the learner (a frame the policy does not read: the store format's check)."""
    env = NaNFrame(make_actor_env(learner.cfg.task, HUMAN), "wrist", at=3)
    try:
        with pytest.raises(ValueError, match=r"policy's 'action' holds NaN or inf"):
            run_episode(learner.actor, env, seed=0, n_obs_steps=2, n_action_steps=1, max_steps=8,
                        embed=POLICY_EMBEDDING)
    finally:
        env.close()


def test_nan_embedding_or_trunk_features_are_refused_and_nothing_written(learner):
    env = make_actor_env(learner.cfg.task, HUMAN)
    try:
        episode, _ = run_episode(learner.actor, env, seed=0, n_obs_steps=2, n_action_steps=1, max_steps=8,
                                 embed=POLICY_EMBEDDING)
    finally:
        env.close()
    assert episode["intervention"].any() and np.isfinite(episode["embedding"]).all()
    demos_before = (learner.demo.n_episodes, learner.demo.n_steps)
    stats = {"actor_pid": 7, "host": "robot"}

    bad = {**episode, "embedding": episode["embedding"].copy()}
    bad["embedding"][2, 5] = np.nan
    with pytest.raises(ValueError, match=r"episode 0 \(actor 7 on robot\): key 'embedding' has non-finite values "
                                         r"\(NaN/inf\) at 1 steps, first at step 2"):
        learner._add_episode(bad, stats)

    trunk = learner.agent.critic.encoder.image_encoders["wrist"].trunk  # a corrupt frozen trunk: NaN features
    weight = next(trunk.parameters())
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=r"key 'trunk_wrist' has non-finite values \(NaN/inf\) at 8 steps"):
        learner._add_episode(episode, stats)

    assert (learner.online.n_episodes, learner.online.n_steps, len(learner.online.sampler)) == (0, 0, 0)
    assert (learner.demo.n_episodes, learner.demo.n_steps) == demos_before
    learner.receive([(bad, stats)])  # in a run: refused with its reason, counted, and the learner goes on
    assert learner.refused == 1 and learner.online.n_episodes == 0
    for name, (n_episodes, _) in {"online": (0, 0), "demos": demos_before}.items():  # nor on disk
        assert ReplayBuffer.create_from_path(learner.output_dir / "buffers" / f"{name}.zarr").n_episodes == n_episodes


def test_pool_refuses_an_episode_whose_actor_raised_and_moves_on():
    """An episode that raises in its actor (a NaN action) is refused and the actor gets the next
    seed: the same seed would fail the same way, so it is not retried, nor counted as a restart."""
    import ray

    from policylab.workspaces.rl_online import ActorPool

    @ray.remote(num_cpus=0)
    class Raises:
        def run_episode(self, seed, weights, version):
            if seed == 0:
                raise ValueError("policy's 'action' holds NaN or inf")
            return {"seed": seed}, {"weights_version": version}

    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False,
             configure_logging=False)
    try:
        said = []
        pool = ActorPool.__new__(ActorPool)  # the pool's bookkeeping, on a stand-in actor (no env)
        pool.actors, pool.first_seed, pool.next_episode, pool.say, pool.pending = [Raises.remote()], 0, 0, said.append, {}
        pool.weights, pool.weights_version, pool.restarts, pool.refused, pool.down = None, 0, 0, 0, []
        pool.start()
        done = []
        while len(done) < 2:
            done += pool.collect(timeout=10)
        assert [episode["seed"] for episode, _ in done] == [1, 2]
        assert (pool.refused, pool.restarts) == (1, 0)
        assert said[0] == "episode 0 refused: ValueError: policy's 'action' holds NaN or inf"
    finally:
        ray.shutdown()
