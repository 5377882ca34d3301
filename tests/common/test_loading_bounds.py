"""Loading a checkpoint from elsewhere is bounded work: each hostile config fails within seconds with an
error naming the file and key (it used to run until killed, or allocate without limit)."""

import contextlib
import re
import signal
import time

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

import policylab.policies.consistency
import policylab.policies.diffusion  # noqa: F401
from policylab.common.checkpoint import CheckpointError, load_config
from policylab.common.config import (
    ConfigLimitError,
    register_resolvers,
    safe_arithmetic,
)
from policylab.common.safe_config import check_config
from policylab.policies.loading import CheckpointRecursionError, load_policy
from tests.common.test_safe_config import _write_checkpoint

SCHEDULER = {"_target_": "diffusers.DDPMScheduler", "num_train_timesteps": 100}


@contextlib.contextmanager
def within(seconds: float):
    """Fail the test (instead of hanging it) when the block runs longer than `seconds`."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < seconds


def _refused(ckpt, match):
    with within(10), pytest.raises((ConfigLimitError, CheckpointError), match=match) as err:
        load_policy(ckpt)
    assert "config.yaml" in str(err.value)
    return err.value


def test_an_oversized_config_is_refused_before_it_is_parsed(tmp_path):
    text = "policy: {_target_: diffusers.DDPMScheduler}\nseeds: [" + "0, " * 600_000 + "0]\n"
    _refused(_write_checkpoint(tmp_path / "c", text), r"config.yaml is \d+ bytes; .* at most 1048576")


def test_a_yaml_alias_bomb_is_refused(tmp_path):
    lines = ["l0: &l0 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 6)]  # 10^6 leaves
    text = "\n".join([*lines, "policy: {_target_: diffusers.DDPMScheduler, betas: *l5}", ""])
    assert len(text) < 1000
    _refused(_write_checkpoint(tmp_path / "c", text), r"config.yaml: l4 expands to more than 50000 values")


def test_a_long_list_is_refused_naming_its_key(tmp_path):
    text = "policy: {_target_: diffusers.DDPMScheduler}\ntask:\n  seeds: [" + "0, " * 20_000 + "0]\n"
    _refused(_write_checkpoint(tmp_path / "c", text), r"config.yaml: task.seeds is a list of 20001 items")


def test_a_deeply_nested_config_is_refused(tmp_path):
    text = "policy: {_target_: diffusers.DDPMScheduler}\nx: " + "[" * 5000 + "]" * 5000 + "\n"
    _refused(_write_checkpoint(tmp_path / "c", text), "nested")


def _chain(n, make):
    return {"a0": 2, **{f"a{i}": make(f"a{i - 1}") for i in range(1, n)}}


@pytest.mark.parametrize("n, match", [(8, r"exceeds 64 bits(.|\n)*full_key: a6"),  # 2^(2^7)
                                      (21, r"reaches more than 16 calc values(.|\n)*full_key: a\d+")])
def test_a_calc_squaring_chain_fails_fast_naming_the_key(tmp_path, n, match):
    config = {**_chain(n, lambda prev: f"${{calc:{prev} * {prev}}}"), "policy": {**SCHEDULER, "x": f"${{a{n - 1}}}"}}
    _refused(_write_checkpoint(tmp_path / "c", config), match)


@pytest.mark.parametrize("make", [lambda p: f"${{calc:${{{p}}} * 0 + ${{{p}}}}}",  # two references, no growth
                                  lambda p: f"${{{p}}}${{{p}}}"])                  # plain string doubling
def test_a_chain_of_references_used_twice_is_refused_before_resolving(tmp_path, make):
    config = {**_chain(24, make), "policy": {**SCHEDULER, "x": "${a23}"}}
    with within(10), pytest.raises(ConfigLimitError, match=r"config.yaml: a\d+ takes more than 200000 steps"):
        load_config(_write_checkpoint(tmp_path / "c", config))


def test_calc_resolves_each_name_once_per_evaluation():
    register_resolvers()
    cfg = OmegaConf.create(_chain(16, lambda prev: f"${{calc:{prev} + {prev} - {prev}}}"))  # 3^15 without it
    with within(5):
        assert cfg.a15 == 2
        assert OmegaConf.to_container(cfg, resolve=True)["a15"] == 2


def test_calc_bounds_depth_size_and_cycles(tmp_path):
    with pytest.raises(ValueError, match="nested deeper than 32"):
        safe_arithmetic("1 + (" * 40 + "1" + ")" * 40)
    with pytest.raises(ValueError, match="1000"):
        safe_arithmetic("1 + " * 400 + "1")
    with pytest.raises(ValueError, match="exceeds 64 bits"):
        safe_arithmetic("n * n * n", {"n": 10 ** 9})
    with pytest.raises(ValueError, match="division by zero"):
        safe_arithmetic("1 // 0")
    cycle = {"a": "${calc:b + 1}", "b": "${calc:a + 1}", "policy": {**SCHEDULER, "x": "${a}"}}
    with within(10), pytest.raises(ConfigLimitError, match="config.yaml: (a|b) refers to itself"):
        load_config(_write_checkpoint(tmp_path / "c", cycle))
    register_resolvers()
    with within(10), pytest.raises(InterpolationResolutionError, match="more than 16 calc values"):
        _ = OmegaConf.create(cycle).a


@pytest.mark.parametrize("key, node, value", [
    ("policy.num_train_timesteps", SCHEDULER, "3e9"),
    ("policy.num_inference_steps", SCHEDULER, "100000000"),
    ("policy.model.down_dims", {"_target_": "policylab.models.unet1d.ConditionalUnet1D", "model": {}},
     "[256, 10000000]"),
    ("policy.model.n_layer", {"_target_": "policylab.models.unet1d.ConditionalUnet1D", "model": {}}, "100000"),
])
def test_sizes_that_allocate_have_sanity_bounds(tmp_path, key, node, value):
    config = OmegaConf.create({"policy": node})
    OmegaConf.update(config, key, OmegaConf.create(f"v: {value}").v, force_add=True)
    _refused(_write_checkpoint(tmp_path / "c", OmegaConf.to_yaml(config)),
             re.escape(key) + " = .* sanity bound")


def test_eval_runner_n_envs_is_bounded():
    runner = {"_target_": "policylab.env_runners.gym_runner.GymEnvRunner", "n_envs": 100_000}
    with pytest.raises(ConfigLimitError, match=r"task\.env_runner\.n_envs = 100000 is beyond the sanity bound 256"):
        check_config(OmegaConf.create(runner), "task.env_runner")


def _self_loading(ckpt, how):
    path = str(ckpt)
    if how == "encoder":
        return {"policy": {"_target_": "policylab.policies.diffusion.DiffusionPolicy",
                           "obs_encoder": {"_target_": "policylab.policies.base.BasePolicy.from_checkpoint",
                                           "path": path}}}
    return {"policy": {"_target_": "policylab.policies.consistency.ConsistencyDistillPolicy", "teacher": path}}


@pytest.mark.parametrize("how", ["encoder", "teacher"])
def test_a_checkpoint_that_loads_itself_fails_fast_and_short(tmp_path, how):
    ckpt = tmp_path / "c"
    _write_checkpoint(ckpt, _self_loading(ckpt, how))
    key = "policy.obs_encoder.path" if how == "encoder" else "policy.teacher"
    with within(5), pytest.raises(CheckpointRecursionError, match=re.escape(key) + " = .* is this checkpoint") as err:
        load_policy(ckpt)
    assert len(str(err.value)) < 400 and str(err.value).count("config.yaml") == 1


def test_two_checkpoints_that_load_each_other_fail_fast_and_short(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    wrap = {"_target_": "policylab.policies.base.BasePolicy.from_checkpoint"}
    _write_checkpoint(a, {"policy": {**wrap, "path": str(b)}})
    _write_checkpoint(b, {"policy": {**wrap, "path": str(a)}})
    with within(5), pytest.raises(CheckpointRecursionError, match=r"b/config.yaml: policy\.path = .*a'") as err:
        load_policy(a)
    assert len(str(err.value)) < 400
