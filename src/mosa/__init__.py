"""mosa: Mixture of Sparse Adapters (MoSA) for parameter-efficient tuning of timm backbones."""

from mosa._version import __version__
from mosa.checkpoint import CheckpointError, load_adapter, read_adapter_config, save_adapter
from mosa.config import ConfigError, MethodConfig
from mosa.export import ExportError, export_timm
from mosa.model import (
    draw_routes,
    forward_twice,
    get_rng_state,
    inject,
    merge,
    routing_groups,
    set_rng_state,
    shared_routes,
    summary,
    unmerge,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ExportError",
    "MethodConfig",
    "__version__",
    "draw_routes",
    "export_timm",
    "forward_twice",
    "get_rng_state",
    "inject",
    "load_adapter",
    "merge",
    "read_adapter_config",
    "routing_groups",
    "save_adapter",
    "set_rng_state",
    "shared_routes",
    "summary",
    "unmerge",
]
