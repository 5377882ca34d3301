"""ConRFT end to end through train.py on pick-cube: SFT -> Stage I (rl_offline) -> Stage II
(rl_online, a learner and one ray actor with the simulated human), exact resume of Stage I,
eval.py on an RL checkpoint, Stage II with its actor on a second ray node, and the faults: an
actor killed mid-run, the learner killed and resumed with its buffers intact."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from eval import main as eval_main
from policylab.common.checkpoint import load_training_state
from policylab.common.logging import read_logs
from policylab.data.generate.__main__ import main as generate
from policylab.data.replay_buffer import ReplayBuffer
from policylab.distributed.placement import check_actor_placement
from tests.helpers import REPO, RL_ENV, descendants_named, run_train, task_overrides

ENV = RL_ENV


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "pick_cube.zarr"
    generate(["task=pick_cube_lowdim", "n=4", "images=false", f"out={out}"])
    return out


def common(store, run_dir, *extra):
    return task_overrides("pick_cube_lowdim", store, run_dir, *extra)


@pytest.fixture(scope="module")
def sft(store, tmp_path_factory):
    """A tiny supervised ConRFT actor with this project's chunk option (T 8, Ta 4)."""
    run_dir = tmp_path_factory.mktemp("sft")
    result = run_train(common(store, run_dir, "policy=conrft_actor", "debug=tiny", "training.num_epochs=1",
                              "training.rollout_every=0"), env_extra=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "checkpoints" / "latest"


def offline(store, run_dir, init, *extra):
    return common(store, run_dir, "workspace=rl_offline", "debug=tiny_rl", f"policy.init={init}", *extra)


@pytest.fixture(scope="module")
def stage1(store, sft, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stage1")
    result = run_train(offline(store, run_dir, sft), env_extra=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_stage1_checkpoint_holds_actor_critic_and_target(stage1):
    latest = stage1 / "checkpoints" / "latest"
    names = {p.name for p in latest.iterdir()}
    assert {"model.safetensors", "critic.safetensors", "target_critic.safetensors", "config.yaml"} <= names
    state = load_training_state(latest)
    assert set(state["optimizers"]) == {"actor", "critic"} and state["global_step"] == 4
    logs = read_logs(stage1 / "logs.jsonl")
    updates = [r for r in logs if "critic_loss" in r]
    assert [r["global_step"] for r in updates] == [1, 2, 3, 4]
    assert all("cql_gap" in r and "bc_loss" in r and "q_pi" in r for r in updates)


def test_stage1_resume_is_exact(store, sft, stage1, tmp_path):
    part = tmp_path / "part"
    first = run_train(offline(store, part, sft, "training.num_steps=2"), env_extra=ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_train(offline(store, part, sft, "training.resume=true"), env_extra=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = {r["global_step"]: r["critic_loss"] for r in read_logs(stage1 / "logs.jsonl") if "critic_loss" in r}
    got = {r["global_step"]: r["critic_loss"] for r in read_logs(part / "logs.jsonl") if "critic_loss" in r}
    assert got.keys() == want.keys()
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, abs=1e-6), step
    fresh = run_train(offline(store, tmp_path / "empty", sft, "training.resume=true"), env_extra=ENV)
    assert fresh.returncode != 0 and "holds no checkpoint" in fresh.stderr


def online(store, run_dir, init, *extra, minutes: float = 5):
    """`minutes`: the learner's time budget, a safety net for the runs that end at `max_env_steps`; on a
    loaded machine a first run can spend 5 minutes, leaving its resumed run none."""
    return common(store, run_dir, "workspace=rl_online", "debug=tiny_rl", f"policy.init={init}",
                  "training.num_steps=100000", "training.training_starts=12", "training.publish_every=2",
                  "training.checkpoint_every=3",
                  f"training.max_train_minutes={minutes}", "online.intervention.takeover_steps=4", *extra)


@pytest.mark.timeout(2400)  # a minute or two idle; far longer on a loaded machine
def test_stage2_trains_resumes_and_evaluates(store, stage1, tmp_path):
    run_dir = tmp_path / "online"
    result = run_train(online(store, run_dir, stage1 / "checkpoints" / "latest", "training.max_env_steps=40",
                              "training.max_updates_per_env_step=0.5", "critic.hidden_dims=[8]", minutes=30), env_extra=ENV,
                       timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "critic config (this run's `critic` differs and is ignored)" in result.stdout  # Stage I's network
    logs = read_logs(run_dir / "logs.jsonl")
    episodes = [r for r in logs if "episode/success" in r]
    onl = ReplayBuffer.create_from_path(run_dir / "buffers" / "online.zarr")
    demos = ReplayBuffer.create_from_path(run_dir / "buffers" / "demos.zarr")
    assert onl.n_episodes == len(episodes) and onl.n_steps >= 40
    first_actions, first_episodes = onl["action"][:], onl.n_episodes  # the store grows when resumed
    intervened = int(onl["intervention"][:].sum())
    assert intervened > 0, "the simulated human never took over"
    assert demos.n_steps > 4 * 12 - 1 and demos.n_episodes > 4, "intervened segments reach the demo store"
    assert any("critic_loss" in r for r in logs) and max(r["episode/weights_version"] for r in episodes) >= 1
    assert "td_loss" in next(r for r in logs if "critic_loss" in r) and not any("cql_gap" in r for r in logs)
    assert all(r["global_step"] <= 0.5 * r["env_steps"] + 1 for r in logs if "critic_loss" in r), "update budget"
    updates = [r["global_step"] for r in logs if "critic_loss" in r]
    assert len(updates) == len(set(updates)), "an update logged twice (the close-out after a wait re-logged it)"

    more = run_train(online(store, run_dir, stage1 / "checkpoints" / "latest", "training.max_env_steps=70",
                            "training.resume=true", minutes=30), env_extra=ENV,
                     timeout=1200)
    assert more.returncode == 0, more.stderr[-3000:]
    again = ReplayBuffer.create_from_path(run_dir / "buffers" / "online.zarr")
    assert again.n_episodes > first_episodes and again.n_steps >= 70
    torch.testing.assert_close(torch.from_numpy(again["action"][: len(first_actions)]),
                               torch.from_numpy(first_actions))  # resumed on top of the same episodes

    ckpt = run_dir / "checkpoints" / "latest"
    log = eval_main(["--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "eval"), "n_test=1", "n_train=0",
                     "max_steps=10"])
    assert 0 <= log["test/mean_score"] <= 1
    assert json.loads((tmp_path / "eval" / "eval_log.json").read_text())["test/mean_score"] == log["test/mean_score"]


@pytest.fixture
def two_ray_nodes(monkeypatch):
    """A ray cluster of two nodes on this machine, everything on the loopback address: the head
    (the learner's node) and a second raylet offering `actor_node`, the actors' machine."""
    from ray.cluster_utils import Cluster

    # ray's session files and its "current cluster" address file go to a directory of this test, so
    # no other ray.init() on the machine joins this cluster (short: ray's socket paths must fit)
    ray_tmp = tempfile.mkdtemp(prefix="ray")
    for key, value in {**ENV, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)  # the raylets start the actors' workers with this environment
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                           "include_dashboard": False})
    try:
        node = cluster.add_node(num_cpus=1, resources={"actor_node": 1}, node_ip_address="127.0.0.1")
        yield cluster, node.node_id
    finally:
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.timeout(2400)  # a minute or two idle; far longer on a loaded machine
def test_stage2_actor_on_a_second_ray_node(store, stage1, two_ray_nodes, tmp_path):
    """`online.actor_resources` puts the actor on the second node; its episodes reach the learner's
    store and the weights the learner publishes reach the actor. Resources no node offers are refused."""
    cluster, actor_node = two_ray_nodes
    nodes = cluster.global_state.node_table()
    with pytest.raises(ValueError, match="no node of the ray cluster offers 'robot'"):
        check_actor_placement(nodes, {"CPU": 1, "robot": 1}, n_actors=1)
    with pytest.raises(ValueError, match="room for 1 of online.n_actors=2 actors"):
        check_actor_placement(nodes, {"CPU": 1, "actor_node": 1}, n_actors=2)

    run_dir = tmp_path / "two_nodes"
    # the learner keeps the loopback address (ray swaps it for the machine's outward one on a cluster)
    env = {**ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    result = run_train(online(store, run_dir, stage1 / "checkpoints" / "latest", "training.max_env_steps=84",
                              "training.publish_every=1", f"online.ray_address={cluster.address}",
                              "online.actor_resources={actor_node: 1}", minutes=30), env_extra=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    episodes = [r for r in read_logs(run_dir / "logs.jsonl") if "episode/success" in r]
    stored = ReplayBuffer.create_from_path(run_dir / "buffers" / "online.zarr").n_episodes
    assert [r["episodes"] for r in episodes] == list(range(1, stored + 1)) and stored >= 7  # log i: stored episode i
    assert {r["episode/node_id"] for r in episodes} == {actor_node}
    versions = [r["episode/weights_version"] for r in episodes]
    assert versions == sorted(versions) and versions[0] == 1 and versions[-1] > 1, versions


@pytest.mark.timeout(900)  # ray restarting the actor process took minutes on a machine loaded 3x
def test_killed_actor_is_restarted_and_killed_learner_resumes(store, stage1, tmp_path):
    run_dir = tmp_path / "faults"
    args = online(store, run_dir, stage1 / "checkpoints" / "latest", "training.max_env_steps=400")
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    # the learner's output goes to a file: an unread pipe fills up and blocks the learner
    output = (tmp_path / "learner.log").open("w")
    learner = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                               stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    logs = run_dir / "logs.jsonl"

    def episodes() -> int:
        return sum("episode/success" in r for r in read_logs(logs)) if logs.exists() else 0

    def wait_for(condition, what, timeout=240):
        deadline = time.monotonic() + timeout
        while not condition():
            tail = lambda: (tmp_path / "learner.log").read_text()[-3000:]
            assert learner.poll() is None, f"learner exited early: {tail()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {tail()}"
            time.sleep(0.5)

    try:
        wait_for(lambda: episodes() >= 2, "two episodes")
        actors = descendants_named(learner.pid, "ray::EnvActor")
        assert actors, "no ray actor process found"
        os.kill(actors[0], signal.SIGKILL)
        before = episodes()
        wait_for(lambda: any(r.get("actor_restarts", 0) >= 1 for r in read_logs(logs)), "the restart", timeout=480)
        wait_for(lambda: episodes() >= before + 2, "episodes after the restart")
        wait_for(lambda: (run_dir / "checkpoints" / "latest" / "config.yaml").exists(), "a checkpoint")
        os.killpg(learner.pid, signal.SIGKILL)
        learner.wait(timeout=30)
    finally:
        if learner.poll() is None:
            os.killpg(learner.pid, signal.SIGKILL)
        output.close()
    stored = ReplayBuffer.create_from_path(run_dir / "buffers" / "online.zarr").n_episodes
    # an episode is stored before it is logged: a kill between the two leaves one more stored
    assert stored >= episodes() >= before + 2, "every finished episode reached the store"

    resumed = run_train(args[:-1] + ["training.max_env_steps=0", "training.resume=true"], env_extra=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ReplayBuffer.create_from_path(run_dir / "buffers" / "online.zarr").n_episodes == stored


def test_seed_sweep_of_stage1_runs(store, sft, tmp_path):
    """`ray_train_multirun.py` runs RL workspaces too: two seeds of Stage I, summarized."""
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    overrides = [o for o in offline(store, tmp_path, sft) if not o.startswith("hydra.run.dir")]
    result = subprocess.run([sys.executable, str(REPO / "ray_train_multirun.py"), "--seeds", "1,2", *overrides,
                             f"hydra.sweep.dir={sweep_dir}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert sorted(r["seed"] for r in summary["runs"]) == [1, 2]
    assert all(r["status"] == "finished" and r["n_evals"] == 1 for r in summary["runs"])
    losses = [[r["critic_loss"] for r in read_logs(sweep_dir / f"seed_{s}" / "logs.jsonl") if "critic_loss" in r]
              for s in (1, 2)]
    assert len(losses[0]) == 4 and losses[0] != losses[1], "each seed trains on its own draws"
