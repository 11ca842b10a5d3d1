"""Find the entries of config lists (pipelines, schedulers, hooks) by type.

Overrides that address an entry by its position (``pipeline[2].scale``,
``param_scheduler.1.end``) silently change the wrong transform once a config
gains, loses or reorders an entry. These helpers address it by its ``type``
and refuse when that is not one entry.
"""
from typing import Any, Mapping, Sequence

__all__ = ['type_name_of', 'find_entry_index', 'find_entry']


def type_name_of(entry: Mapping) -> str:
    """The ``type`` of a config entry without its scope: ``'mmsape.SaPE2'`` ->
    ``'SaPE2'``; a class (lazy configs) gives its ``__name__``."""
    name: Any = entry.get('type', '')
    return name.split('.')[-1] if isinstance(name, str) else getattr(name, '__name__', '')


def find_entry_index(entries: Sequence[Mapping], type_name: str) -> int:
    """The position of the one entry of ``entries`` whose type is ``type_name``.

    The scope is ignored on both sides (``'mmsape.X'`` matches ``'X'``).

    Raises:
        ValueError: If no entry or several entries have that type; the message
            lists the types present.

    Examples:
        >>> pipeline = [dict(type='LoadImageFromFile'), dict(type='mmseg.Resize')]
        >>> find_entry_index(pipeline, 'Resize')
        1
    """
    wanted = type_name.split('.')[-1]
    matches = [i for i, entry in enumerate(entries) if type_name_of(entry) == wanted]
    if len(matches) != 1:
        present = [type_name_of(entry) for entry in entries]
        problem = 'has no' if not matches else f'has {len(matches)} entries of type'
        raise ValueError(f'The list {problem} {wanted!r}: {present}. Name a type that '
                         f'occurs once, or edit the list itself.')
    return matches[0]


def find_entry(entries: Sequence[Mapping], type_name: str) -> Any:
    """The one entry of ``entries`` whose type is ``type_name`` (the entry
    itself, so that changing it changes the config).

    Examples:
        >>> schedulers = [dict(type='LinearLR', end=30), dict(type='PolyLR', begin=30)]
        >>> find_entry(schedulers, 'LinearLR')['end'] = 2
        >>> schedulers[0]
        {'type': 'LinearLR', 'end': 2}
    """
    return entries[find_entry_index(entries, type_name)]
