"""Model folding (docs/folding.md): merge structurally similar units, data-free, so the network
really becomes narrower; structured magnitude pruning of the same units is the baseline. The
groups and the merge step are the coupling graph's (big2small.transforms).

To store a folded model, list the fold in a recipe (Recipe(transforms=[FoldConfig(...)])) and
compress the original, or store a FoldResult with big2small.folding.export.to_compressed (not
imported here: it sits above compress, which applies a recipe's fold)."""

from big2small.folding.config import FoldConfig
from big2small.folding.fold import FoldResult, count_macs, count_parameters, fold
from big2small.transforms import CouplingGroup as FoldGroup
from big2small.transforms import CouplingReport as GroupReport
from big2small.transforms import Member, find_groups

__all__ = ["FoldConfig", "FoldGroup", "FoldResult", "GroupReport", "Member", "count_macs", "count_parameters",
           "find_groups", "fold"]
