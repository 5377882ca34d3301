"""Whether a ray cluster can place the online learner's actors, checked before asking ray for them.

Ray queues an actor whose resources no node offers and waits for such a node forever (an
autoscaler might add one), so a learner on a cluster where the actor's machine never joined, or
joined without `--resources`, would hang without a word. `check_actor_placement` turns that into
an error that names the missing resource and what each node offers.

    check_actor_placement(ray.nodes(), {"CPU": 1, "actor_node": 1}, n_actors=1)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

# ray's own bookkeeping resources, left out of the error message's list of what a node offers
_INTERNAL = ("memory", "object_store_memory")


def actor_slots(resources: Mapping[str, float], requirements: Mapping[str, float]) -> int:
    """How many actors that each need `requirements` fit in a node's total `resources`."""
    fits = [math.floor(resources.get(key, 0.0) / amount + 1e-9) for key, amount in requirements.items() if amount > 0]
    return min(fits, default=1 << 30)


def check_actor_placement(nodes: Sequence[Mapping], requirements: Mapping[str, float], n_actors: int) -> None:
    """Raise a ValueError unless the alive `nodes` have room for `n_actors` actors needing `requirements`.

    Args:
        nodes: ray's node table (`ray.nodes()`): dicts with `Alive`, `NodeID`, `NodeManagerAddress`
            and `Resources` (the node's total resources, e.g. `{"CPU": 4.0, "actor_node": 1.0}`).
        requirements: one actor's resources: `CPU` from `online.num_cpus_per_actor`, the rest
            from `online.actor_resources`.
        n_actors: `online.n_actors`.
    """
    bad = {key: amount for key, amount in requirements.items()
           if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0}
    if bad:
        raise ValueError(f"online.actor_resources: amounts must be numbers >= 0 (ray resources), got {bad}")
    alive = [node for node in nodes if node.get("Alive", node.get("alive", False))]
    slots = sum(actor_slots(node["Resources"], requirements) for node in alive)
    if slots >= n_actors:
        return
    offers = "; ".join(f"node {node['NodeID'][:8]} at {node.get('NodeManagerAddress')}: {_offer(node['Resources'])}"
                       for node in alive) or "no node is alive"
    missing = [key for key, amount in requirements.items()
               if amount > 0 and not any(node["Resources"].get(key, 0.0) >= amount for node in alive)]
    custom = {key: amount for key, amount in requirements.items() if key != "CPU"}
    hint = (f" Start ray on the actors' machine with `ray start --address=<head>:6379 "
            f"--resources='{json.dumps(custom)}'` before the learner." if custom else "")
    if missing:
        raise ValueError(f"no node of the ray cluster offers {', '.join(map(repr, missing))} for the actors "
                         f"(each needs {dict(requirements)}: online.num_cpus_per_actor as CPU, "
                         f"online.actor_resources): {offers}. Ray would wait for such a node forever.{hint}")
    raise ValueError(f"the ray cluster has room for {slots} of online.n_actors={n_actors} actors, each needing "
                     f"{dict(requirements)} on one node (online.num_cpus_per_actor as CPU, online.actor_resources): "
                     f"{offers}. Ray would wait for room forever.{hint}")


def _offer(resources: Mapping[str, float]) -> str:
    shown = {key: amount for key, amount in sorted(resources.items())
             if key not in _INTERNAL and not key.startswith("node:")}
    return ", ".join(f"{key} {amount:g}" for key, amount in shown.items()) or "nothing"
