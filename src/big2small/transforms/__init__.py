"""Structural transforms: the coupling graph of a model (graph.py), the one step that narrows a
group of it (apply.py), shared by folding, structured pruning and self-compression, and the typed
records of what a transform did, stored in the manifest (records.py)."""

from big2small.transforms.apply import (
    apply,
    constant_inputs,
    named_tensor,
    replace_tensor,
    reshape_to,
    select,
    sync_sizes,
)
from big2small.transforms.graph import (
    CouplingGroup,
    CouplingReport,
    Member,
    Trace,
    find_groups,
    traced_groups,
    transformer_groups,
)

__all__ = [
    "CouplingGroup", "CouplingReport", "Member", "Trace", "apply", "constant_inputs", "find_groups", "named_tensor",
    "replace_tensor", "reshape_to", "select", "sync_sizes", "traced_groups", "transformer_groups",
]
