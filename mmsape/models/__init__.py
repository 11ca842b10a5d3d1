from .backbones import *  # noqa: F401,F403
from .detectors import PaddingAwareMaskRCNN, PaddingAwareRetinaNet
from .layers import LayerNorm2d
from .necks import *  # noqa: F401,F403
from .pos_encodings import *  # noqa: F401,F403
