"""The runnable Examples in docstrings stay true."""
import doctest
import importlib

import pytest

MODULES = [
    'mmsape.models.backbones.pos_enc_vit',
    'mmsape.models.necks.simple_fpn',
    'mmsape.models.pos_encodings.absolute',
    'mmsape.models.pos_encodings.peg',
    'mmsape.models.pos_encodings.rope',
    'mmsape.models.pos_encodings.cope',
    'mmsape.models.pos_encodings.lookhere',
    'mmsape.models.pos_encodings.pape',
    'mmsape.models.pos_encodings.grid_cache',
    'mmsape.models.pos_encodings.sape2',
    'mmsape.models.utils.vit_pretrained',
    'mmsape.utils.atomic_io',
    'mmsape.utils.state_dict_report',
    'projects.alibi2d.alibi2d.alibi2d',
]


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0, f'{name} has no runnable examples'
