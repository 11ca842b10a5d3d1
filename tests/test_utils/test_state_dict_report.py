"""The key-mismatch table printed when loading pretrained weights."""
import torch

from mmsape.utils import format_state_dict_report


def test_format_state_dict_report() -> None:
    report = format_state_dict_report(
        missing=['neck.b', 'head.w'],
        unexpected={'aux.w': (3, )},
        resized=[('pos_embed', (1, 197, 768), torch.Size([1, 50, 768]))])
    assert report == '\n'.join([
        'key       | status     | detail',
        '----------+------------+-----------------------------------------------',
        'head.w    | missing    | absent from checkpoint',
        'neck.b    | missing    | absent from checkpoint',
        'aux.w     | unexpected | checkpoint (3,)',
        'pos_embed | resized    | checkpoint (1, 197, 768) -> model (1, 50, 768)',
    ])
    assert format_state_dict_report([], [], {}) == (
        'State dict matches: no missing, unexpected or resized keys.')
