from .checkpoint import (
                         CheckpointError,
                         CorruptCheckpointError,
                         UnsafeCheckpointError,
                         allow_mmengine_checkpoint_types,
                         atomic_save,
                         format_state_dict_report,
                         load_checkpoint_safely,
                         load_from_http_safely,
    load_from_local_safely,
                         mmengine_checkpoint_safe_globals,
                         patch_mmengine_checkpointing,
                         save_checkpoint_atomically,
)
from .setup_env import register_all_modules

__all__ = [
    'register_all_modules', 'CheckpointError', 'CorruptCheckpointError',
    'UnsafeCheckpointError', 'mmengine_checkpoint_safe_globals',
    'allow_mmengine_checkpoint_types', 'load_checkpoint_safely', 'atomic_save',
    'save_checkpoint_atomically', 'load_from_local_safely', 'load_from_http_safely',
    'patch_mmengine_checkpointing',
    'format_state_dict_report'
]
