"""What the README and docs/ promise about configs and files: the presets their commands name exist
and carry the budgets their tables used; their relative links point at files of the repository."""

import re

import pytest

from tests.helpers import REPO, compose_config

DOCS = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_conrft_presets_carry_the_budgets_of_the_readme_table():
    """Stage I ran 15 minutes (1,432 iterations, not ConRFT's 20,000), Stage II 20 minutes with one actor."""
    stage1 = compose_config(["experiment=conrft_pick_cube_stage1"])
    assert stage1.workspace._target_.endswith("rl_offline.OfflineRLWorkspace")
    assert stage1.task.name == "pick_cube_lowdim"
    assert (stage1.training.max_train_minutes, stage1.training.torch_threads) == (15, 1)
    stage2 = compose_config(["experiment=conrft_pick_cube_stage2"])
    assert stage2.workspace._target_.endswith("rl_online.OnlineRLWorkspace")
    assert stage2.task.name == "pick_cube_lowdim"
    assert (stage2.training.max_train_minutes, stage2.training.torch_threads) == (20, 1)
    assert (stage2.online.n_actors, stage2.online.actor_torch_threads) == (1, 1)
    readme = (REPO / "README.md").read_text()
    assert "experiment=conrft_pick_cube_stage1" in readme and "experiment=conrft_pick_cube_stage2" in readme


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_named_experiments_exist(doc):
    names = set(re.findall(r"experiment=([a-z0-9_]+)", doc.read_text()))
    missing = sorted(n for n in names if not (REPO / "config" / "experiment" / f"{n}.yaml").exists())
    assert not missing, f"{doc.name} names experiments that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text())
    missing = sorted(link for link in links if not (doc.parent / link).exists())
    assert not missing, f"{doc.name} links to missing files: {missing}"
