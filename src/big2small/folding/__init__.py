"""Model folding (docs/folding.md): merge structurally similar units, data-free, so the network
really becomes narrower; structured magnitude pruning of the same units is the baseline. The
groups and the merge step are the coupling graph's (big2small.transforms)."""

from big2small.folding.config import FoldConfig
from big2small.folding.export import to_compressed
from big2small.folding.fold import FoldResult, count_macs, count_parameters, fold
from big2small.transforms import CouplingGroup as FoldGroup
from big2small.transforms import CouplingReport as GroupReport
from big2small.transforms import Member, find_groups

__all__ = ["FoldConfig", "FoldGroup", "FoldResult", "GroupReport", "Member", "count_macs", "count_parameters",
           "find_groups", "fold", "to_compressed"]
