"""The policy contract, checked for every policy config in config/policy/ (new ones join
automatically) on a low-dim and an image task: build, finite loss and gradients, shapes,
save/load round trip, determinism under a seed."""

from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from policylab.common.checkpoint import remove_checkpoint, save_checkpoint
from policylab.data.datasets.sequence import SequenceDataset
from policylab.policies.loading import load_policy
from tests.helpers import CONFIG_DIR, compose_config, make_pusht_store

POLICIES = sorted(p.stem for p in (CONFIG_DIR / "policy").glob("*.yaml"))
CASES = [(policy, task, None) for policy in POLICIES for task in ("pusht_lowdim", "pusht_image")]
CASES.append(("diffusion_unet", "pusht_image", "octo_tiny"))  # the Octo encoder through config
TEACHERS = {"consistency_ctm": "diffusion_edm"}  # the teacher each distillation method needs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_pusht_store(tmp_path_factory.mktemp("data") / "pusht.zarr", lengths=[20, 24])


def distills(cfg) -> bool:
    # `"teacher" in cfg` is False while the value is still ??? (missing)
    return "teacher" in cfg.policy.keys()  # noqa: SIM118


def build(policy_name, task, encoder, store, teacher_dir: Path | None = None):
    overrides = ["debug=tiny", f"policy={policy_name}", f"task={task}", f"task.dataset.zarr_path={store}"]
    if encoder:
        overrides.append(f"policy/obs_encoder={encoder}")
    cfg = compose_config(overrides)
    if distills(cfg):  # a distillation method: first make the teacher it distills
        teacher_cfg, teacher, _ = build(TEACHERS.get(policy_name, "diffusion_unet"), task, encoder, store)
        cfg.policy.teacher = str(save_checkpoint(teacher_dir / "teacher", teacher_cfg, teacher))
    OmegaConf.resolve(cfg)
    torch.manual_seed(0)
    policy = hydra.utils.instantiate(cfg.policy)
    dataset: SequenceDataset = hydra.utils.instantiate(cfg.task.dataset)
    policy.set_normalizer(dataset.get_normalizer())
    policy.on_train_start()
    return cfg, policy, dataset


@pytest.mark.parametrize("policy_name, task, encoder", CASES)
def test_policy_contract(policy_name, task, encoder, store, tmp_path):
    cfg, policy, dataset = build(policy_name, task, encoder, store, teacher_dir=tmp_path)
    batch = dataset.get_batch(np.arange(4))
    T, To, Ta = cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps

    loss, metrics = policy.compute_loss(batch)
    assert torch.isfinite(loss)
    assert loss.ndim == 0
    assert metrics["loss"] == pytest.approx(loss.item())
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert grads
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > len(grads) // 2

    policy.eval()
    out = policy.predict_action(batch["obs"], generator=torch.Generator().manual_seed(1))
    assert out["action"].shape == (4, Ta, 2)
    assert out["action_pred"].shape == (4, T, 2)
    torch.testing.assert_close(out["action"], out["action_pred"][:, To - 1:To - 1 + Ta])
    same = policy.predict_action(batch["obs"], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(same["action_pred"], out["action_pred"], rtol=0, atol=0)
    other = policy.predict_action(batch["obs"], generator=torch.Generator().manual_seed(2))
    assert not torch.equal(other["action_pred"], out["action_pred"])

    ckpt = save_checkpoint(tmp_path / "ckpt", cfg, policy)
    if distills(cfg):  # the student's checkpoint must not need its teacher
        remove_checkpoint(tmp_path / "teacher")
    loaded = load_policy(ckpt)
    assert type(loaded) is type(policy)
    for (k, a), (k2, b) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert k == k2, k
        assert torch.equal(a, b), k
    again = loaded.predict_action(batch["obs"], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again["action_pred"], out["action_pred"], rtol=0, atol=0)


def test_missing_obs_key_and_wrong_shape_are_named(store):
    _, policy, dataset = build("diffusion_unet", "pusht_lowdim", None, store)
    obs = dataset.get_batch([0])["obs"]
    with pytest.raises(KeyError, match="'keypoint'"):
        policy.predict_action({"agent_pos": obs["agent_pos"]})
    with pytest.raises(ValueError, match=r"obs\['agent_pos'\] must be"):
        policy.predict_action({**obs, "agent_pos": obs["agent_pos"][..., :1]})


def test_ddim_and_ddpm_inference_from_one_network(store):
    _, policy, dataset = build("diffusion_unet", "pusht_lowdim", None, store)
    obs = dataset.get_batch([0, 1])["obs"]
    policy.eval()
    from diffusers import DDIMScheduler
    policy.inference_scheduler = DDIMScheduler.from_config(policy.noise_scheduler.config)
    for steps in (1, 3, 16):
        policy.num_inference_steps = steps
        assert torch.isfinite(policy.predict_action(obs)["action"]).all()


def test_experiment_packs_match_diffusion_policy():
    """The values the reference (diffusion_policy.md §2) gives for the published runs."""
    cfg = compose_config(["experiment=dp_pusht_state_cnn"])
    assert (cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps) == (16, 2, 8)
    assert list(cfg.policy.model.down_dims) == [256, 512, 1024]
    assert cfg.policy.model.kernel_size == 5
    assert cfg.policy.model.diffusion_step_embed_dim == 256
    assert cfg.policy.model.n_groups == 8
    ns = cfg.policy.noise_scheduler
    assert (ns.num_train_timesteps, ns.beta_schedule, ns.clip_sample, ns.prediction_type, ns.variance_type) == (
        100, "squaredcos_cap_v2", True, "epsilon", "fixed_small")
    assert cfg.policy.num_inference_steps == 100
    assert cfg.policy.inference_scheduler == "ddpm"
    assert (cfg.optimizer.lr, list(cfg.optimizer.betas), cfg.optimizer.eps, cfg.optimizer.weight_decay) == (
        1e-4, [0.95, 0.999], 1e-8, 1e-6)
    assert (cfg.lr_scheduler.name, cfg.lr_scheduler.warmup_steps) == ("cosine", 500)
    assert (cfg.ema.power, cfg.ema.max_value, cfg.ema.inv_gamma) == (0.75, 0.9999, 1.0)
    assert (cfg.dataloader.batch_size, cfg.training.num_epochs, cfg.training.rollout_every) == (256, 5000, 50)
    assert (cfg.task.dataset.val_ratio, cfg.task.dataset.max_train_episodes) == (0.02, 90)
    assert (cfg.task.env_runner.n_test, cfg.task.env_runner.max_steps, cfg.task.env_runner.test_start_seed) == (
        50, 300, 100000)
    assert cfg.checkpoint.topk == 5
    assert cfg.checkpoint.monitor_key == "test/mean_score"

    image = compose_config(["experiment=dp_pusht_image_cnn"])
    assert list(image.policy.model.down_dims) == [512, 1024, 2048]
    assert image.policy.model.diffusion_step_embed_dim == 128
    assert list(image.policy.obs_encoder.crop_shape) == [84, 84]
    assert image.policy.obs_encoder.use_group_norm
    assert image.dataloader.batch_size == 64
    assert image.training.num_epochs == 3050
    assert image.task.name == "pusht_image"

    dpt = compose_config(["experiment=dp_pusht_state_transformer"])
    m = dpt.policy.model
    assert (m.n_layer, m.n_head, m.n_emb, m.p_drop_attn, m.causal_attn) == (8, 4, 256, 0.01, True)
    assert list(dpt.optimizer.betas) == [0.9, 0.95]
    assert dpt.lr_scheduler.warmup_steps == 1000


def test_published_state_config_has_the_original_parameter_count():
    cfg = compose_config(["experiment=dp_pusht_state_cnn"])
    OmegaConf.resolve(cfg)
    policy = hydra.utils.instantiate(cfg.policy)
    assert sum(p.numel() for p in policy.model.parameters()) == 65_783_298


def test_yaml_typo_in_a_section_names_the_key():
    from policylab.workspaces.base import check_schema
    from policylab.workspaces.supervised import TrainingConfig

    cfg = OmegaConf.create({"training": {"num_epoch": 3}})
    with pytest.raises(Exception, match="num_epoch"):
        check_schema(cfg, "training", TrainingConfig)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes(name):
    cfg = compose_config([f"experiment={name}"])
    assert cfg.policy._target_
    assert cfg.task.shape_meta
    if "ConditionalUnet1D" in str(cfg.policy.get("model", {}).get("_target_", "")):
        assert cfg.horizon % 4 == 0, "the UNet halves the horizon twice"


def test_cpu_experiments_share_one_backbone():
    """The quality benchmark compares methods on the same network, data and horizons."""
    cfgs = [compose_config([f"experiment={name}"])
            for name in ("pusht_state_cpu", "pusht_state_cpu_consistency", "pusht_state_cpu_distill")]
    keys = ("horizon", "n_obs_steps", "n_action_steps")
    for cfg in cfgs[1:]:
        assert cfg.policy.model == cfgs[0].policy.model
        assert cfg.task.name == cfgs[0].task.name
        assert all(cfg[k] == cfgs[0][k] for k in keys)
    assert {type(c.policy._target_) for c in cfgs} == {str}
    assert len({c.policy._target_ for c in cfgs}) == 3
