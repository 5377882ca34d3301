"""`check_actor_placement` on node tables in ray's `ray.nodes()` format (the real two-node cluster
is in tests/workspaces/test_rl_workspaces.py)."""

import pytest

from policylab.distributed.placement import actor_slots, check_actor_placement


def node(node_id: str, **resources) -> dict:
    return {"NodeID": node_id * 8, "Alive": True, "NodeManagerAddress": "10.0.0.1",
            "Resources": {"memory": 8e9, "object_store_memory": 1e9, f"node:{node_id}": 1.0, **resources}}


LEARNER, ROBOT = node("a", CPU=4.0), node("b", CPU=2.0, robot=1.0)


def test_slots_are_the_tightest_resource():
    assert actor_slots({"CPU": 4.0, "robot": 2.0}, {"CPU": 1, "robot": 1}) == 2
    assert actor_slots({"CPU": 1.0}, {"CPU": 0.5}) == 2
    assert actor_slots({"CPU": 1.0}, {"CPU": 1, "robot": 1}) == 0
    assert actor_slots({"CPU": 0.3 * 3}, {"CPU": 0.3}) == 3  # a float total a hair short of 3 x 0.3 still fits 3
    assert actor_slots({}, {"CPU": 0}) > 1000  # needs nothing: no limit


def test_placement_passes_when_a_node_has_room():
    check_actor_placement([LEARNER, ROBOT], {"CPU": 1, "robot": 1}, n_actors=1)
    check_actor_placement([LEARNER, ROBOT], {"CPU": 1}, n_actors=6)


def test_missing_resource_is_named_with_what_nodes_offer():
    with pytest.raises(ValueError, match="offers 'robot'") as err:
        check_actor_placement([LEARNER], {"CPU": 1, "robot": 1}, n_actors=1)
    message = str(err.value)
    assert "node aaaaaaaa at 10.0.0.1: CPU 4" in message and "memory" not in message
    assert """--resources='{"robot": 1}'""" in message
    dead = {**ROBOT, "Alive": False}  # a node that left the cluster offers nothing
    with pytest.raises(ValueError, match="offers 'robot'"):
        check_actor_placement([LEARNER, dead], {"CPU": 1, "robot": 1}, n_actors=1)


def test_resources_needed_together_on_one_node():
    cpu_less = node("c", robot=1.0)  # robot here, CPUs elsewhere: no node has both
    with pytest.raises(ValueError, match="room for 0 of online.n_actors=1 actors"):
        check_actor_placement([LEARNER, cpu_less], {"CPU": 1, "robot": 1}, n_actors=1)
    with pytest.raises(ValueError, match="room for 1 of online.n_actors=2 actors"):
        check_actor_placement([LEARNER, ROBOT], {"CPU": 1, "robot": 1}, n_actors=2)


def test_bad_amounts_are_refused():
    for amount in ("one", -1, True, float("nan")):
        with pytest.raises(ValueError, match="online.actor_resources: amounts must be numbers"):
            check_actor_placement([ROBOT], {"CPU": 1, "robot": amount}, n_actors=1)
