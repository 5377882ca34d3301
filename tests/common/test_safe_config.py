"""A checkpoint's config.yaml builds only allow-listed targets; nothing in it runs code."""

import hashlib
import importlib.util
import json
import pathlib

import hydra
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from policylab.common.config import compose
from policylab.common.safe_config import (
    UnsafeConfigError,
    check_config,
    instantiate_trusted,
)
from policylab.policies.loading import load_policy
from tests.helpers import CONFIG_DIR, REPO


class Payload:
    """Unpickling it (torch.load(weights_only=False)) creates the marker file: the code an attacker runs."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), tmp_path / "payload.bin")
    return tmp_path / "payload.bin", marker


def _torch_load(path):
    return {"_target_": "torch.load", "f": str(path), "weights_only": False}


def _policy_with_encoder(encoder):
    return {"_target_": "policylab.policies.diffusion.DiffusionPolicy", "horizon": 16,
            "obs_encoder": encoder, "model": {"_target_": "policylab.models.unet1d.ConditionalUnet1D"}}


def _write_checkpoint(ckpt: pathlib.Path, config: dict | str) -> pathlib.Path:
    """A checkpoint directory as an attacker ships it: any config.yaml, consistent checksums."""
    ckpt.mkdir(parents=True)
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    (ckpt / "config.yaml").write_text(text)
    (ckpt / "checksums.json").write_text(json.dumps({"config.yaml": hashlib.sha256(text.encode()).hexdigest()}))
    return ckpt


def test_the_payload_runs_through_plain_hydra(payload):
    """The reproduction: what load_policy did before (hydra.utils.instantiate on the checkpoint's YAML)."""
    path, marker = payload
    hydra.utils.instantiate(OmegaConf.create(_torch_load(path)))
    assert marker.exists()


def _variants(path, marker):
    load = _torch_load(path)
    return {
        "obs_encoder": ("policy.obs_encoder._target_", _policy_with_encoder(load)),
        "nested": ("policy.obs_encoder.backbone.stem._target_",
                   _policy_with_encoder({"_target_": "policylab.models.encoders.multi_image.MultiImageObsEncoder",
                                         "backbone": {"stem": load}})),
        "partial": ("policy.obs_encoder._target_", _policy_with_encoder({**load, "_partial_": True})),
        "args": ("policy.obs_encoder._target_",
                 _policy_with_encoder({"_target_": "torch.load", "_args_": [str(path)], "weights_only": False})),
        "target_in_args": ("policy.obs_encoder._args_[0]._target_",
                           _policy_with_encoder({"_target_": "policylab.models.unet1d.ConditionalUnet1D",
                                                 "_args_": [load]})),
        "list": ("policy.obs_encoder.cameras[1]._target_", _policy_with_encoder({"cameras": [{"a": 1}, load]})),
        "not_recursive": ("policy.obs_encoder.inner._target_",
                          _policy_with_encoder({"_target_": "policylab.models.unet1d.ConditionalUnet1D",
                                                "_recursive_": False, "inner": load})),
        "exec": ("policy.obs_encoder._target_",
                 _policy_with_encoder({"_target_": "builtins.exec",
                                       "_args_": [f"open({str(marker)!r}, 'w').close()"]})),
        "os_system": ("policy.obs_encoder._target_",
                      _policy_with_encoder({"_target_": "os.system", "_args_": [f"touch {marker}"]})),
        "top_level": ("policy._target_", load),
        "through_policylab_module": ("policy.obs_encoder._target_",
                                     _policy_with_encoder({**load, "_target_": "policylab.policies.diffusion.torch.load"})),
        "policylab_function": ("policy.obs_encoder._target_",
                               _policy_with_encoder({"_target_": "policylab.models.encoders.resnet.load_weights_file",
                                                     "path": str(path)})),
        "oc_decode": ("policy.obs_encoder",
                      _policy_with_encoder("${oc.decode:'{_target_: torch.load, f: " + str(path) + "}'}")),
        "oc_env": ("policy.obs_encoder", _policy_with_encoder("${ oc.env : HOME }")),
        "escaped": ("policy.obs_encoder", _policy_with_encoder("\\${oc.env:HOME}")),
        "bad_flag": ("policy.obs_encoder._partial_", _policy_with_encoder({**load, "_partial_": "yes"})),
    }


@pytest.mark.parametrize("variant", sorted(_variants("p", "m")))
def test_hostile_checkpoint_is_refused_and_nothing_runs(payload, tmp_path, variant):
    path, marker = payload
    key, policy = _variants(path, marker)[variant]
    ckpt = _write_checkpoint(tmp_path / "ckpt", {"policy": policy})
    with pytest.raises(UnsafeConfigError) as err:
        load_policy(ckpt)
    assert key in str(err.value)
    assert "config.yaml" in str(err.value)
    if "_target_" in key:
        assert repr(OmegaConf.select(OmegaConf.create({"policy": policy}), key)) in str(err.value)
    assert not marker.exists()


def test_interpolation_from_elsewhere_in_the_config_is_checked(payload, tmp_path):
    path, marker = payload
    config = {"policy": _policy_with_encoder("${task.enc}"),
              "task": {"enc": "${oc.decode:'{_target_: torch.load, f: " + str(path) + "}'}"}}
    with pytest.raises(UnsafeConfigError, match=r"task\.enc"):
        load_policy(_write_checkpoint(tmp_path / "ckpt", config))
    assert not marker.exists()


def test_assembled_interpolation_is_refused():
    cfg = OmegaConf.create({"a": "$", "b": "{oc.env:HOME}", "policy": {"x": "${a}${b}"}})
    with pytest.raises(UnsafeConfigError, match=r"policy\.x"):
        check_config(cfg.policy, "policy")


def test_env_id_may_only_import_policylab_envs():
    good = {"_target_": "policylab.env_runners.gym_runner.GymEnvRunner",
            "env_id": "policylab.envs.pusht:policylab/PushTKeypoints-v0"}
    check_config(OmegaConf.create(good), "task.env_runner")
    with pytest.raises(UnsafeConfigError, match=r"task\.env_runner\.env_id.*'antigravity'"):
        check_config(OmegaConf.create({**good, "env_id": "antigravity:x-v0"}), "task.env_runner")


def test_allowed_targets_build_with_calc_and_references():
    cfg = OmegaConf.create({"width": 4, "policy": {
        "_target_": "diffusers.DDPMScheduler", "num_train_timesteps": "${calc:'2 * ${width}'}"}})
    scheduler = instantiate_trusted(cfg.policy, "policy")
    assert scheduler.config.num_train_timesteps == 8


def _eval_module():
    spec = importlib.util.spec_from_file_location("policylab_eval_script", REPO / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_refuses_a_hostile_env_runner_before_building_anything(payload, tmp_path):
    path, marker = payload
    config = {"policy": _policy_with_encoder({"_target_": "policylab.models.unet1d.ConditionalUnet1D"}),
              "task": {"env_runner": {**_torch_load(path), "n_test": 1}}}
    ckpt = _write_checkpoint(tmp_path / "ckpt", config)
    with pytest.raises(UnsafeConfigError, match=r"task\.env_runner\._target_ = 'torch\.load'"):
        _eval_module().main(["--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "out")])
    assert not marker.exists()


TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
POLICIES = sorted(p.stem for p in (CONFIG_DIR / "policy").glob("*.yaml"))
ENCODERS = sorted(p.stem for p in (CONFIG_DIR / "policy" / "obs_encoder").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def _check_composed(runs: list[list[str]]) -> None:
    for overrides in runs:
        cfg = compose(overrides, config_dir=CONFIG_DIR)
        # A checkpoint holds the resolved config: check that form as well as the composed one.
        saved = OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True))
        for key in ("policy", "task.env_runner", "task.dataset"):
            for tree in (cfg, saved):
                check_config(OmegaConf.select(tree, key), f"{key} ({' '.join(overrides)})")


@pytest.mark.parametrize("task", TASKS)
def test_this_task_with_every_shipped_policy_passes_the_check(task):
    _check_composed([[f"task={task}", f"policy={policy}"] for policy in POLICIES])


def test_every_shipped_encoder_and_experiment_passes_the_check():
    runs = [["task=pusht_image", f"policy/obs_encoder={e}"] for e in ENCODERS]
    _check_composed(runs + [[f"experiment={e}"] for e in EXPERIMENTS] + [["debug=tiny"]])
