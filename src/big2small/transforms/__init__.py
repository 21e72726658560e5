"""Model transforms: methods that change the architecture (channel groups, narrowing)."""

from big2small.transforms.coupling import ChannelGroup, CouplingReport, channel_groups, constant_inputs
from big2small.transforms.narrow import remove_channels, reshape_to

__all__ = ["ChannelGroup", "CouplingReport", "channel_groups", "constant_inputs", "remove_channels", "reshape_to"]
