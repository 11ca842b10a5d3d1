# Copyright (c) OpenMMLab. All rights reserved.
"""One readable table of the keys that did not match when loading a state dict."""
from collections.abc import Iterable, Mapping, Sequence
from typing import List, Tuple, Union

__all__ = ['format_state_dict_report']

Shape = Sequence[int]


def _format_shape(shape: Shape) -> str:
    return '(' + ', '.join(str(int(d)) for d in shape) + (',)' if len(shape) == 1 else ')')


def _rows_for(keys: Union[Iterable[str], Mapping[str, Shape]], status: str,
              shape_owner: str, absent_from: str) -> List[Tuple[str, str, str]]:
    if isinstance(keys, Mapping):
        return [(key, status, f'{shape_owner} {_format_shape(shape)}')
                for key, shape in sorted(keys.items())]
    return [(key, status, f'absent from {absent_from}') for key in sorted(keys)]


def format_state_dict_report(
    missing: Union[Iterable[str], Mapping[str, Shape]],
    unexpected: Union[Iterable[str], Mapping[str, Shape]],
    resized: Union[Mapping[str, Tuple[Shape, Shape]], Iterable[Tuple[str, Shape, Shape]]],
) -> str:
    """Render a state-dict mismatch summary as one aligned table.

    Rows are grouped by status (missing, unexpected, resized) and sorted by
    key within each group.

    Args:
        missing (Iterable[str] | Mapping[str, Sequence[int]]): Model keys
            absent from the checkpoint, optionally mapped to the model shape.
        unexpected (Iterable[str] | Mapping[str, Sequence[int]]): Checkpoint
            keys absent from the model, optionally mapped to their shape.
        resized (Mapping[str, tuple] | Iterable[tuple]): Keys whose shapes
            differ, as ``{key: (checkpoint_shape, model_shape)}`` or
            ``(key, checkpoint_shape, model_shape)`` triples.

    Returns:
        str: The table (no trailing newline), or a one-line message if all
        keys matched.

    Example:
        >>> print(format_state_dict_report(['head.bias'], {'fc.w': (2, 3)},
        ...                                {'stem.w': ((8, 3), (16, 3))}))
        key       | status     | detail
        ----------+------------+-----------------------------------
        head.bias | missing    | absent from checkpoint
        fc.w      | unexpected | checkpoint (2, 3)
        stem.w    | resized    | checkpoint (8, 3) -> model (16, 3)
    """
    if isinstance(resized, Mapping):
        resized_items = sorted((k, v[0], v[1]) for k, v in resized.items())
    else:
        resized_items = sorted(resized)
    rows = (
        _rows_for(missing, 'missing', 'model', 'checkpoint') +
        _rows_for(unexpected, 'unexpected', 'checkpoint', 'model') + [
            (key, 'resized', f'checkpoint {_format_shape(ckpt_shape)} -> '
             f'model {_format_shape(model_shape)}')
            for key, ckpt_shape, model_shape in resized_items
        ])
    if not rows:
        return 'State dict matches: no missing, unexpected or resized keys.'

    header = ('key', 'status', 'detail')
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]

    def render(cells: Sequence[str]) -> str:
        # The last column is not padded, so lines carry no trailing spaces.
        return ' | '.join([cells[0].ljust(widths[0]), cells[1].ljust(widths[1]), cells[2]])

    separator = '-+-'.join('-' * width for width in widths)
    return '\n'.join([render(header), separator, *(render(row) for row in rows)])
