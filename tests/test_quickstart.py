"""`make quickstart`'s script end to end at a tiny size: demos -> train -> eval -> the printed summary."""

import json

from policylab import quickstart


def test_quickstart_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    result = quickstart.main(["--episodes", "2", "--n_test", "1", "--minutes", "10", "--out", str(out),
                              "training.max_train_steps=3", "training.num_epochs=5"])
    printed = capsys.readouterr().out
    assert result["steps"] == 3
    assert 0.0 <= result["mean_score"] <= 1.0
    log = json.loads((out / "eval" / "eval_log.json").read_text())
    assert log["test/mean_score"] == result["mean_score"]
    # the run is the EDM quickstart policy, trained on the demos the script wrote
    config = (out / "run" / "checkpoints" / "latest" / "config.yaml").read_text()
    assert "policylab.policies.edm.EDMDiffusionPolicy" in config
    assert (out / "pusht_state.zarr").is_dir()
    assert f"PushT test mean_score {result['mean_score']:.3f}" in printed
    assert "budget 10 min: met" in printed


def test_demos_written_by_two_processes_are_merged_into_one_store(tmp_path):
    """Two generator processes (seeds from 0 and from 10,000) -> one store with every episode and
    seed, the parts gone; a second call keeps the complete store."""
    from policylab.data.generate.pusht import SEEDS_KEY
    from policylab.data.replay_buffer import ReplayBuffer

    store = tmp_path / "pusht_state.zarr"
    quickstart.make_demos(3, store, workers=2)
    buffer = ReplayBuffer.create_from_path(str(store))
    assert buffer.n_episodes == 3
    seeds = buffer.meta[SEEDS_KEY][:].tolist()
    assert seeds[:2] == [0, 1] and seeds[2] == 10_000  # the expert succeeds on these seeds
    assert "img" not in buffer and buffer["action"].shape == (buffer.n_steps, 2)
    status = buffer.checksum_status()  # every episode keeps its checksums through the merge
    assert status["episodes"] == 3 and "action" in status["checked"] and not status["unchecked"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["pusht_state.zarr"]
    mtime = (store / "meta").stat().st_mtime_ns
    quickstart.make_demos(3, store, workers=2)
    assert (store / "meta").stat().st_mtime_ns == mtime


def test_free_cores_is_between_one_and_the_cores_of_the_process():
    import os

    cores = len(os.sched_getaffinity(0))
    assert 1 <= quickstart.free_cores(sample_s=0.1) <= cores
    idle, total = quickstart._cpu_ticks()
    assert 0 <= idle <= total
