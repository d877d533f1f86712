"""The hooks a mistralrs plugin can implement (pluggy, as pytest and `llm` do).

A plugin is a module (or any object) with functions marked `@hookimpl`, published under the
`mistralrs.architectures` entry-point group:

    [project.entry-points."mistralrs.architectures"]
    my_family = "my_package.plugin"
"""
from __future__ import annotations

import pluggy

PROJECT = "mistralrs"
ENTRY_POINT_GROUP = "mistralrs.architectures"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_architectures(register):
    """Call `register(Architecture(...))` once for each architecture this plugin provides."""
