"""Checks of a run's inputs before any work starts: the datasets its dataloaders
read, the annotation files its evaluators read, and the checkpoints it loads.

Without them a missing dataset surfaces as an ``[Errno 2]`` from deep inside the
dataset class once the Runner builds its dataloader, and a missing pretrained
file as MMEngine's ``... can not be found.`` once the weights are initialised,
after the model and the process group are up. :func:`check_run_inputs` looks at
the config first and raises one :class:`MissingInputError` that lists every
missing input with what the config expects there and how to point it elsewhere.

What is checked is what the run reads: for training, the train and validation
dataloaders, the validation evaluator, every ``Pretrained`` ``init_cfg`` of the
model and ``load_from``; for testing, the test dataloader, the test evaluator
and the checkpoint.

Datasets are read the way their classes read their arguments, for the common
classes of the three toolboxes and their subclasses: mmseg's ``BaseSegDataset``
(``ADE20KDataset``: ``data_root`` with the image and label-map folders of
``data_prefix``), mmdet's ``CocoDataset`` (``ann_file`` and the image folder of
``data_prefix``) and mmpretrain's ``CustomDataset`` (``ImageNet``: ``data_root``
with ``split`` or ``data_prefix``, and ``ann_file``). Wrappers
(``RepeatDataset``, ``ConcatDataset``, ``ClassBalancedDataset``,
``MultiImageMixDataset``) are followed to the datasets they wrap; other dataset
types, and data on remote storage (``s3://``, a non-local ``backend_args``),
are not checked.

Checkpoints: a local path must be a file; an ``http(s)://`` URL must be in the
download cache (:func:`mmsape.utils.hub_cache_path`, where an offline machine
can put it) or answer a HEAD request (a one-byte GET where HEAD is refused)
within ``timeout`` seconds. Other schemes (``open-mmlab://``, ``s3://``, ...)
are left to their loaders.
"""
import importlib
import inspect
import os
import os.path as osp
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.registry import DATASETS

from mmsape.utils import hub_cache_path, prepare_scope

__all__ = [
    'MissingInput', 'MissingInputError', 'MissingDataError', 'MissingCheckpointError',
    'find_missing_inputs', 'find_missing_data', 'check_run_inputs'
]

#: The README section of each dataset family: the standard layout, where the
#: data comes from and the commands that train on it.
README_SECTIONS = {
    'seg': 'README.md#ade20k-semantic-segmentation',
    'det': 'README.md#coco-detection-and-instance-segmentation',
    'cls': 'README.md#imagenet-classification',
}
PRETRAINED_SECTION = 'README.md#pretrained-weights-url-or-local-file'
#: Seconds a URL may take to answer the reachability check.
DEFAULT_TIMEOUT = 10.


@dataclass
class MissingInput:
    """One missing input of a run.

    Attributes:
        kind (str): ``'data'`` (a dataset's folder or annotation file, an
            evaluator's annotation file) or ``'checkpoint'``.
        key (str): Where the config names it (``'train_dataloader.dataset'``,
            ``'model.backbone.init_cfg.checkpoint'``).
        message (str): What is missing, what the config expects there and the fix.
    """
    kind: str
    key: str
    message: str


class MissingInputError(FileNotFoundError):
    """Inputs of a run are missing; :attr:`missing` lists them (:class:`MissingInput`).

    :class:`MissingDataError` when only data is missing,
    :class:`MissingCheckpointError` when only checkpoints are.
    """

    def __init__(self, missing: Sequence[MissingInput]) -> None:
        self.missing = list(missing)
        count = len(self.missing)
        header = (f'The run was not started: {count} of its inputs '
                  f'{"is" if count == 1 else "are"} missing (relative paths are relative to '
                  f'the current directory, {os.getcwd()}).')
        super().__init__('\n\n'.join([header, *(item.message for item in self.missing)]))

    def __str__(self) -> str:  # OSError would show its arguments as a tuple
        return self.args[0]


class MissingDataError(MissingInputError):
    """Only datasets (folders, annotation files) of a run are missing."""


class MissingCheckpointError(MissingInputError):
    """Only checkpoints of a run are missing or out of reach."""


def check_run_inputs(cfg: Config, mode: str = 'train',
                     timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise a :class:`MissingInputError` listing every input of the run that
    is missing; return quietly when all are there.

    Args:
        cfg (Config): The run's config (as :func:`mmsape.apis.load_config` gives
            it, with ``--cfg-options`` merged and ``load_from`` set).
        mode (str): ``'train'`` or ``'test'``. Defaults to 'train'.
        timeout (float): Seconds a checkpoint URL may take to answer.

    Raises:
        MissingDataError: Only data is missing.
        MissingCheckpointError: Only checkpoints are missing or out of reach.
        MissingInputError: Both.
    """
    missing = find_missing_inputs(cfg, mode, timeout)
    if not missing:
        return
    kinds = {item.kind for item in missing}
    error = {frozenset({'data'}): MissingDataError,
             frozenset({'checkpoint'}): MissingCheckpointError}.get(frozenset(kinds),
                                                                   MissingInputError)
    raise error(missing)


def find_missing_inputs(cfg: Config, mode: str = 'train',
                        timeout: float = DEFAULT_TIMEOUT) -> List[MissingInput]:
    """The inputs of the run that are missing (see :func:`check_run_inputs`)."""
    if mode not in ('train', 'test'):
        raise ValueError(f"mode={mode!r}: check the inputs of a 'train' or a 'test' run.")
    if mode == 'train':
        # The Runner validates only with all three of these.
        validates = all(cfg.get(key) is not None
                        for key in ('val_dataloader', 'val_cfg', 'val_evaluator'))
        loaders = ['train_dataloader'] + (['val_dataloader'] if validates else [])
        evaluators = ['val_evaluator'] if validates else []
    else:
        loaders, evaluators = ['test_dataloader'], ['test_evaluator']
    missing = find_missing_data(cfg, loaders, evaluators)
    if mode == 'train':
        for key, checkpoint, parent in _pretrained_checkpoints(cfg.get('model'), 'model'):
            missing += _checkpoint_problems(checkpoint, key, parent, timeout)
    if cfg.get('load_from'):
        missing += _checkpoint_problems(cfg.load_from, 'load_from', None, timeout)
    return missing


def find_missing_data(cfg: Config, dataloaders: Sequence[str] = ('train_dataloader', ),
                      evaluators: Sequence[str] = ()) -> List[MissingInput]:
    """The missing data of the datasets of ``dataloaders`` (config keys) and of
    the evaluators of ``evaluators``; checkpoints are not looked at."""
    scope = prepare_scope(cfg)
    missing = []
    for loader in dataloaders:
        if cfg.get(loader) and cfg[loader].get('dataset'):
            missing += _dataset_problems(cfg[loader].dataset, f'{loader}.dataset', scope)
    for evaluator in evaluators:
        missing += _evaluator_problems(cfg.get(evaluator), evaluator)
    return missing


# --- datasets -------------------------------------------------------------------------
def _dataset_problems(dataset: dict, key: str, scope: str) -> List[MissingInput]:
    """The missing inputs of a dataset config, wrappers followed."""
    if isinstance(dataset.get('dataset'), dict):  # RepeatDataset, ClassBalancedDataset, ...
        return _dataset_problems(dataset['dataset'], f'{key}.dataset', scope)
    if isinstance(dataset.get('datasets'), (list, tuple)):  # ConcatDataset
        return [problem for index, part in enumerate(dataset['datasets'])
                for problem in _dataset_problems(part, f'{key}.datasets.{index}', scope)]
    cls = _dataset_class(dataset, scope)
    family = _family(cls) if cls is not None else None
    if family is None or not _is_local(dataset):
        return []
    root = _argument(cls, dataset, 'data_root') or ''
    entries = _ENTRIES[family](cls, dataset, root)
    label = f'{key} ({cls.__name__}, {cls.__module__.split(".")[0]})'
    reads = '\n'.join(f'    {name:<11} {pattern}' for name, _, _, pattern, _ in entries)
    if root and not osp.isdir(root):
        problem = f'data_root {root} does not exist.'
        fixes = [f'--cfg-options {key}.data_root=/path/to/{osp.basename(osp.normpath(root))}']
        advice = 'put the dataset there (a symbolic link will do), or point the config at it:'
    else:
        absent = [(name, path, option) for name, path, kind, _, option in entries
                  if not (osp.isdir(path) if kind == 'dir' else osp.isfile(path))]
        if not absent:
            return []
        problem = ' '.join(f'No {name} {"folder" if name != "annotations" else "file"} '
                           f'{path}.' for name, path, _ in absent)
        fixes = [f'--cfg-options {key}.{option}=...' for _, _, option in absent]
        advice = 'complete the layout, or name where the parts are:'
    message = (f'{label}: {problem}\n'
               f'  This config reads:\n{reads}\n'
               f'  The standard layout and where to download the data: {README_SECTIONS[family]}.\n'
               f'  Fix: {advice}\n' + '\n'.join(f'    {fix}' for fix in fixes))
    return [MissingInput('data', key, message)]


def _dataset_class(dataset: dict, scope: str) -> Optional[type]:
    """The class a dataset config builds, looked up as the Runner would (its
    ``_scope_``, else the config's scope); None when it is not registered."""
    dataset_type = dataset.get('type')
    if isinstance(dataset_type, type):
        return dataset_type
    if not isinstance(dataset_type, str):
        return None
    scope = dataset.get('_scope_', scope)
    try:
        registry = importlib.import_module(f'{scope}.registry').DATASETS
    except (ImportError, AttributeError):  # a scope with no dataset registry of its own
        registry = DATASETS
    try:
        found = registry.get(dataset_type)
    except KeyError:  # an unknown scope prefix
        return None
    return found if isinstance(found, type) else None


def _family(cls: type) -> Optional[str]:
    """'seg', 'det' or 'cls' for the dataset classes checked here, else None."""
    from mmdet.datasets import CocoDataset
    from mmpretrain.datasets import CustomDataset
    from mmseg.datasets import BaseSegDataset
    for family, base in (('seg', BaseSegDataset), ('det', CocoDataset),
                         ('cls', CustomDataset)):
        if issubclass(cls, base):
            return family
    return None


def _is_local(dataset: dict) -> bool:
    backend = (dataset.get('backend_args') or {}).get('backend', 'local')
    paths = [dataset.get('data_root'), dataset.get('ann_file'), dataset.get('data_prefix')]
    remote = any('://' in str(path) for path in paths if path)
    return backend == 'local' and not remote


def _argument(cls: type, dataset: dict, name: str) -> Any:
    """A dataset argument: the config's value, else the default of the first
    class in the MRO whose ``__init__`` names it."""
    if name in dataset:
        return dataset[name]
    for klass in cls.__mro__:
        parameters = inspect.signature(klass.__init__).parameters
        if name in parameters and parameters[name].default is not inspect.Parameter.empty:
            return parameters[name].default
    return None


def _join(root: str, path: str) -> str:
    """``path`` under ``root`` as MMEngine's ``BaseDataset`` joins them."""
    if not path:
        return root
    return osp.normpath(path if osp.isabs(path) or not root else osp.join(root, path))


#: (name, path, 'dir' | 'file', what is read there, the config option that names it)
Entry = Tuple[str, str, str, str, str]


def _seg_entries(cls: type, dataset: dict, root: str) -> List[Entry]:
    prefix = _argument(cls, dataset, 'data_prefix') or {}
    images = _join(root, prefix.get('img_path', ''))
    labels = _join(root, prefix.get('seg_map_path', ''))
    entries = [
        ('images', images, 'dir', osp.join(images, '*' + _argument(cls, dataset, 'img_suffix')),
         'data_prefix.img_path'),
        ('label maps', labels, 'dir',
         osp.join(labels, '*' + _argument(cls, dataset, 'seg_map_suffix')),
         'data_prefix.seg_map_path'),
    ]
    return entries + _ann_file_entry(cls, dataset, root, 'the images to use, one per line')


def _det_entries(cls: type, dataset: dict, root: str) -> List[Entry]:
    entries = _ann_file_entry(cls, dataset, root, 'COCO json')
    prefix = _argument(cls, dataset, 'data_prefix') or {}
    for name, path in prefix.items():
        if name in ('img', 'img_path'):
            folder = _join(root, path)
            entries.append(('images', folder, 'dir', osp.join(folder, '*.jpg'),
                            f'data_prefix.{name}'))
    return entries


def _cls_entries(cls: type, dataset: dict, root: str) -> List[Entry]:
    prefix = _argument(cls, dataset, 'data_prefix') or ''
    option = 'data_prefix'
    if isinstance(prefix, dict):
        prefix, option = prefix.get('img_path', ''), 'data_prefix.img_path'
    split = dataset.get('split', '')
    if split and not prefix:  # mmpretrain's ImageNet: the split names the folder
        prefix = split
    folder = _join(root, prefix)
    entries = _ann_file_entry(cls, dataset, root, 'lines "<image path> <class index>"')
    pattern = (osp.join(folder, '<image path of ann_file>') if entries
               else osp.join(folder, '<class>', '*.JPEG'))
    return entries + [('images', folder, 'dir', pattern, option)]


def _ann_file_entry(cls: type, dataset: dict, root: str, content: str) -> List[Entry]:
    ann_file = _argument(cls, dataset, 'ann_file')
    if not ann_file:
        return []
    path = _join(root, ann_file)
    return [('annotations', path, 'file', f'{path} ({content})', 'ann_file')]


_ENTRIES = {'seg': _seg_entries, 'det': _det_entries, 'cls': _cls_entries}


def _evaluator_problems(evaluator: Any, key: str) -> List[MissingInput]:
    """An evaluator's ``ann_file`` (mmdet's ``CocoMetric`` reads the COCO json
    of the set it evaluates), for one evaluator or a list."""
    if isinstance(evaluator, (list, tuple)):
        return [problem for index, part in enumerate(evaluator)
                for problem in _evaluator_problems(part, f'{key}.{index}')]
    if not isinstance(evaluator, dict):
        return []
    ann_file = evaluator.get('ann_file')
    if not ann_file or '://' in str(ann_file) or osp.isfile(ann_file):
        return []
    message = (f'{key} ({evaluator.get("type")}): no annotation file {ann_file}, which it '
               f'compares the predictions with.\n'
               f'  Fix: put it there, or --cfg-options {key}.ann_file=/path/to/'
               f'{osp.basename(ann_file)} (the annotation file of the evaluated set); the '
               f'standard layout: {README_SECTIONS["det"]}.')
    return [MissingInput('data', key, message)]


# --- checkpoints ----------------------------------------------------------------------
def _pretrained_checkpoints(node: Any, key: str) -> Iterator[Tuple[str, str, Optional[str]]]:
    """``(key of the checkpoint, checkpoint, key of its init_cfg)`` for every
    ``Pretrained`` init_cfg inside the model config (and mmseg's ``pretrained``)."""
    if isinstance(node, dict):
        for name, value in node.items():
            child = f'{key}.{name}'
            if name == 'init_cfg':
                for index, init in enumerate(value if isinstance(value, (list, tuple))
                                             else [value]):
                    init_key = f'{child}.{index}' if isinstance(value, (list, tuple)) else child
                    if (isinstance(init, dict) and init.get('type') == 'Pretrained'
                            and init.get('checkpoint')):
                        yield f'{init_key}.checkpoint', init['checkpoint'], child
            elif name == 'pretrained' and isinstance(value, str):
                yield child, value, None
            else:
                yield from _pretrained_checkpoints(value, child)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _pretrained_checkpoints(value, f'{key}.{index}')


def _checkpoint_problems(checkpoint: str, key: str, init_key: Optional[str],
                         timeout: float) -> List[MissingInput]:
    checkpoint = str(checkpoint)
    from_scratch = (f', or train from scratch: --cfg-options {init_key}=None' if init_key
                    else f', or --cfg-options {key}=None' if key != 'load_from' else '')
    if checkpoint.startswith(('http://', 'https://')):
        cached = hub_cache_path(checkpoint)
        if osp.isfile(cached):
            return []
        reason = _unreachable_reason(checkpoint, timeout)
        if reason is None:
            return []
        message = (f'{key}: {checkpoint} cannot be reached ({reason}), and it is not in the '
                   f'download cache ({cached}).\n'
                   f'  Fix: on a machine without internet, download it elsewhere and either '
                   f'copy it to {cached} or name the copy: --cfg-options {key}=PATH'
                   f'{from_scratch}. See {PRETRAINED_SECTION}.')
    elif '://' in checkpoint:
        return []  # open-mmlab://, s3://, ...: their loaders resolve them
    elif osp.isfile(osp.expanduser(checkpoint)):
        return []
    else:
        message = (f'{key}: {checkpoint} is not a file.\n'
                   f'  Fix: name the file: --cfg-options {key}=PATH{from_scratch}. '
                   f'See {PRETRAINED_SECTION}.')
    return [MissingInput('checkpoint', key, message)]


def _unreachable_reason(url: str, timeout: float) -> Optional[str]:
    """None if ``url`` answers a HEAD request (or, where HEAD is refused, a
    one-byte GET), else why not."""
    headers = {'User-Agent': 'mmsape'}
    requests = [urllib.request.Request(url, method='HEAD', headers=headers),
                urllib.request.Request(url, headers={**headers, 'Range': 'bytes=0-0'})]
    reason = None
    for request in requests:
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return None
        except urllib.error.HTTPError as error:
            reason = f'HTTP {error.code} {error.reason}'
            if error.code not in (403, 405, 501):  # not a refusal of HEAD itself
                return reason
        except (urllib.error.URLError, OSError, ValueError) as error:
            return f'{type(error).__name__}: {getattr(error, "reason", error)}'
    return reason
