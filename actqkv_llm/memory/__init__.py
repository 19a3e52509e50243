"""Where a document's KV lives: blocks of full KV, their summary keys, a device-side cache, one layer's state."""

from .blocks import GrowableBlocks, KVBlocks, StackedBlocks
from .block_cache import DeviceBlockCache, HostBlocks
from .layer_memory import LayerMemory
from .quantized import Int8Blocks
from .summaries import SummaryKeys

__all__ = ["KVBlocks", "GrowableBlocks", "StackedBlocks", "HostBlocks", "DeviceBlockCache", "Int8Blocks",
           "SummaryKeys", "LayerMemory"]
