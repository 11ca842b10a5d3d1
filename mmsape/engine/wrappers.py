"""Model wrappers registered in the mmsape scope."""
from mmengine.model import MMDistributedDataParallel
from torch import nn

from mmsape.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMEngine's DDP wrapper for CPU processes (gloo).

    MMEngine's Runner always passes ``device_ids=[LOCAL_RANK]``, which torch's
    DDP rejects for a module on the CPU; here they are dropped. Selected by
    ``tools/train.py`` / ``tools/test.py`` on machines without GPUs.
    """

    def __init__(self, module: nn.Module, device_ids=None, **kwargs) -> None:
        super().__init__(module=module, device_ids=None, **kwargs)
