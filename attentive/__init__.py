"""attentive: once-for-all weight-sharing NAS with AttentiveNAS sampling."""
from .export import load_subnet
from .flops import count_flops, count_flops_batch, count_params, count_params_batch, encode
from .space import Arch, SearchSpace, available_spaces, load_space
from .static import StaticNet
from .supernet import Supernet

__all__ = [
    "Arch", "SearchSpace", "Supernet", "StaticNet", "available_spaces", "count_flops", "count_flops_batch",
    "count_params", "count_params_batch", "encode", "load_space", "load_subnet",
]
__version__ = "0.1.0"
