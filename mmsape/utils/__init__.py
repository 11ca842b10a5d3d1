"""The bottom layer: checkpoint I/O and module registration (imports only mmsape.registry)."""
from .atomic_io import atomic_save, atomic_write, atomic_writer
from .checkpoint import (
                         CheckpointError,
                         CorruptCheckpointError,
                         UnsafeCheckpointError,
                         hub_cache_path,
                         load_checkpoint_safely,
                         load_url_safely,
)
from .safe_globals import allow_mmengine_checkpoint_types, mmengine_checkpoint_safe_globals
from .setup_env import prepare_scope, register_all_modules
from .state_dict_report import format_state_dict_report

__all__ = [
    'CheckpointError', 'CorruptCheckpointError', 'UnsafeCheckpointError',
    'load_checkpoint_safely', 'load_url_safely', 'hub_cache_path',
    'mmengine_checkpoint_safe_globals',
    'allow_mmengine_checkpoint_types', 'atomic_writer', 'atomic_write', 'atomic_save',
    'format_state_dict_report', 'register_all_modules', 'prepare_scope'
]
