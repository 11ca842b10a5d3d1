"""Config list entries found by type: the one entry, or an error naming the types."""
import pytest

from mmsape.utils.config_entries import find_entry, find_entry_index, type_name_of

PIPELINE = [dict(type='LoadImageFromFile'), dict(type='mmdet.LoadAnnotations'),
            dict(type='RandomResize', scale=(384, 192)), dict(type='RandomFlip'),
            dict(type='PackDetInputs')]


def test_found_wherever_it_stands_and_changed_in_place():
    for shift in range(len(PIPELINE)):
        pipeline = [dict(t) for t in PIPELINE[shift:] + PIPELINE[:shift]]
        find_entry(pipeline, 'RandomResize')['scale'] = (100, 50)
        assert [t.get('scale') for t in pipeline if t['type'] == 'RandomResize'] == [(100, 50)]
        assert sum('scale' in t for t in pipeline) == 1


def test_scope_is_ignored_on_both_sides():
    assert find_entry_index(PIPELINE, 'LoadAnnotations') == 1
    assert find_entry_index(PIPELINE, 'mmseg.RandomFlip') == 3
    assert type_name_of(dict(type=dict)) == 'dict'  # lazy configs hold classes


def test_missing_or_repeated_type_is_refused():
    with pytest.raises(ValueError, match=r"has no 'Resize'.*'RandomResize'"):
        find_entry(PIPELINE, 'Resize')
    with pytest.raises(ValueError, match=r"has 2 entries of type 'RandomFlip'"):
        find_entry_index(PIPELINE + [dict(type='RandomFlip')], 'RandomFlip')
