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
