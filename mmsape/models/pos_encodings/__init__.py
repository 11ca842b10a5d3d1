from .absolute import LearnedAPE, NoPositionEncoding, SinCos2DPositionEncoding
from .base import (
    AttentionBiasPositionEncoding,
    AttentionPositionEncoding,
    BasePositionEncoding,
    TokenGrid,
)
from .builder import PositionEncodingStack, build_pos_encoding, registered_pos_encodings
from .cope import CoPE1D
from .lookhere import LookHere
from .pape import PaPE
from .peg import PEG
from .rope import RoPE2D
from .sape2 import SaPE2

__all__ = [
    'BasePositionEncoding', 'AttentionPositionEncoding', 'AttentionBiasPositionEncoding',
    'TokenGrid', 'PositionEncodingStack',
    'build_pos_encoding', 'registered_pos_encodings', 'LearnedAPE',
    'SinCos2DPositionEncoding', 'NoPositionEncoding', 'PEG', 'RoPE2D', 'CoPE1D',
    'LookHere', 'PaPE', 'SaPE2'
]
