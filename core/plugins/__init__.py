"""The plugin system: hookspecs, the `Architecture` record and the registry of installed plugins."""
from mistralrs.plugins.architecture import (
    Architecture,
    CheckpointFormat,
    MappedTensor,
    WeightMapper,
)
from mistralrs.plugins.hookspecs import ENTRY_POINT_GROUP, hookimpl
from mistralrs.plugins.lazy import lazy
from mistralrs.plugins.registry import PluginInfo, PluginRegistry, default_registry

__all__ = [
    "Architecture",
    "CheckpointFormat",
    "ENTRY_POINT_GROUP",
    "MappedTensor",
    "PluginInfo",
    "PluginRegistry",
    "WeightMapper",
    "default_registry",
    "hookimpl",
    "lazy",
]
