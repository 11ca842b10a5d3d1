"""mmsape's packages import only the ones below them (README, "Layout").

Every module under ``mmsape/`` is parsed, and every import of an mmsape module
is checked against the map: ``import`` / ``from ... import`` statements anywhere
in the file (also inside functions), relative ones resolved, and
``importlib.import_module`` / ``__import__`` calls with a literal name. Imports
through the registries' ``locations`` (strings that MMEngine imports) are how the
lower layers reach the upper ones, and are not imports here.

Two finer rules: ``models/utils`` (checkpoint key conversion) knows the
position encodings only through their interface (``pos_encodings.base`` /
``builder``), each encoding converting its own keys; and ``utils`` names no
type of ``engine`` by its registry string (``'mmsape.<Name>'``), which would be
an upward dependency that no import shows.
"""
import ast
import re
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / 'mmsape'

#: Top-level part of mmsape -> the parts it may import (besides itself and
#: ``version``). ``analysis`` is the top (its measurements build models and
#: Runners through ``apis``), ``registry`` and ``utils`` the bottom.
MAY_IMPORT = {
    'analysis': {'apis', 'models', 'engine', 'datasets', 'evaluation', 'testing', 'ops',
                 'utils', 'registry'},
    'apis': {'models', 'engine', 'datasets', 'evaluation', 'testing', 'ops', 'utils',
             'registry'},
    'models': {'ops', 'utils', 'registry'},
    'engine': {'utils', 'registry'},
    'datasets': {'utils', 'registry'},
    'evaluation': {'utils', 'registry'},
    'testing': {'utils'},
    'ops': {'utils'},
    'utils': {'registry'},
    'registry': set(),
    'version': set(),
    '': set(),  # mmsape/__init__.py
}


def module_name(path: Path) -> Tuple[str, bool]:
    """``('mmsape.engine.hooks', True)`` for ``mmsape/engine/hooks/__init__.py``."""
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix('').parts
    if parts[-1] == '__init__':
        return '.'.join(parts[:-1]), True
    return '.'.join(parts), False


def part_of(module: str) -> Optional[str]:
    """The top-level part of mmsape a dotted name belongs to; None outside mmsape."""
    parts = module.split('.')
    if parts[0] != 'mmsape':
        return None
    return parts[1] if len(parts) > 1 else ''


def imported_modules(module: str, is_package: bool, source: str) -> Iterator[Tuple[int, str]]:
    """``(line, dotted name)`` of every module that ``source`` imports."""
    package = module if is_package else module.rpartition('.')[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - (node.level - 1)]
                origin = '.'.join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            # ``from mmsape import models`` imports the module mmsape.models.
            for alias in node.names:
                yield node.lineno, f'{origin}.{alias.name}'
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, 'attr', getattr(node.func, 'id', None))
              in ('import_module', '__import__')):
            yield node.lineno, node.args[0].value


def upward_imports(module: str, is_package: bool, source: str) -> List[str]:
    """The imports in ``source`` that the map forbids, as ``'module:line -> name'``."""
    own = part_of(module)
    allowed = MAY_IMPORT[own] | {own, 'version'}
    violations = []
    for line, name in imported_modules(module, is_package, source):
        target = part_of(name)
        if target is not None and target not in allowed and name != 'mmsape.__version__':
            violations.append(f'{module}:{line} -> {name}')
    return violations


def all_modules() -> List[Path]:
    return sorted(PACKAGE_ROOT.rglob('*.py'))


def test_every_part_of_the_package_is_on_the_map():
    parts = {part_of(module_name(path)[0]) for path in all_modules()}
    assert parts <= set(MAY_IMPORT), f'place {parts - set(MAY_IMPORT)} in MAY_IMPORT'


def test_no_module_imports_a_layer_above_it():
    violations = []
    for path in all_modules():
        module, is_package = module_name(path)
        violations += upward_imports(module, is_package, path.read_text(encoding='utf-8'))
    assert violations == []


SYNTHETIC = '''
import importlib
from mmsape.registry import MODELS          # allowed for utils
from . import atomic_io                     # allowed: utils itself

def load():
    from mmsape.models import PosEncViT     # inside a function
    from .. import engine                   # relative, to mmsape.engine
    from ..datasets.transforms import DataFileError
    return importlib.import_module('mmsape.analysis')
'''


@pytest.mark.parametrize('module, is_package, expected', [
    ('mmsape.utils.bad', False, ['mmsape.models.PosEncViT', 'mmsape.engine',
                                 'mmsape.datasets.transforms.DataFileError',
                                 'mmsape.analysis']),
    ('mmsape.ops.sape2', False, ['mmsape.registry.MODELS', 'mmsape.models.PosEncViT',
                                 'mmsape.engine', 'mmsape.datasets.transforms.DataFileError',
                                 'mmsape.analysis']),
    ('mmsape.analysis.resolution', False, []),  # the top may import everything
])
def test_the_check_finds_a_synthetic_violation(module, is_package, expected):
    found = upward_imports(module, is_package, SYNTHETIC)
    assert sorted(violation.split(' -> ')[1] for violation in found) == sorted(expected)


# ---------------------------------------------------------------------------
# models/utils knows the encodings only through their interface
# ---------------------------------------------------------------------------
#: Modules of ``mmsape.models.pos_encodings`` that hold the interface, not an encoding.
ENCODING_INTERFACE = ('base', 'builder')


def registered_encoding_names() -> set:
    from mmsape.models.pos_encodings import registered_pos_encodings
    return set(registered_pos_encodings())


def concrete_encoding_imports(module: str, is_package: bool, source: str,
                              encoding_names: set) -> List[str]:
    """Imports in ``source`` of a position encoding's own module or class."""
    found = []
    for line, name in imported_modules(module, is_package, source):
        inside = name.startswith('mmsape.models.pos_encodings')
        part = name.split('.')[3] if inside and name.count('.') >= 3 else None
        if (inside and part not in ENCODING_INTERFACE) or (
                name.startswith('mmsape.') and name.rpartition('.')[2] in encoding_names
                and not (inside and part in ENCODING_INTERFACE)):
            found.append(f'{module}:{line} -> {name}')
    return found


def test_models_utils_imports_no_concrete_encoding():
    encodings = registered_encoding_names()
    violations = []
    for path in sorted((PACKAGE_ROOT / 'models' / 'utils').rglob('*.py')):
        module, is_package = module_name(path)
        violations += concrete_encoding_imports(module, is_package,
                                                path.read_text(encoding='utf-8'), encodings)
    assert violations == []


ENCODING_IMPORTS = '''
from mmsape.models.pos_encodings.base import BasePositionEncoding    # allowed
from ..pos_encodings.builder import PositionEncodingStack             # allowed
from mmsape.models.pos_encodings import LearnedAPE
from ..pos_encodings.sape2 import SaPE2

def find():
    from mmsape.models import SaPE2
    import mmsape.models.pos_encodings
'''


def test_the_encoding_check_finds_a_synthetic_violation():
    found = concrete_encoding_imports('mmsape.models.utils.bad', False, ENCODING_IMPORTS,
                                      registered_encoding_names())
    assert sorted(violation.split(' -> ')[1] for violation in found) == sorted([
        'mmsape.models.pos_encodings.LearnedAPE', 'mmsape.models.pos_encodings.sape2.SaPE2',
        'mmsape.models.SaPE2', 'mmsape.models.pos_encodings'])


# ---------------------------------------------------------------------------
# utils names no engine type by string
# ---------------------------------------------------------------------------
REGISTRY_NAME = re.compile(r'\bmmsape\.(\w+)')


def engine_type_names() -> set:
    """Names that ``mmsape.engine`` registers in mmsape's registries."""
    from mmengine.registry import Registry

    import mmsape.engine  # noqa: F401  (registers them)
    from mmsape import registry
    names = set()
    for mmsape_registry in vars(registry).values():
        if isinstance(mmsape_registry, Registry) and mmsape_registry.scope == 'mmsape':
            names |= {name for name, obj in mmsape_registry.module_dict.items()
                      if getattr(obj, '__module__', '').startswith('mmsape.engine')}
    return names


def engine_type_strings(module: str, source: str, engine_names: set) -> List[str]:
    """String constants of ``source`` (docstrings aside) that name an engine type."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings):
            found += [f'{module}:{node.lineno} -> mmsape.{name}'
                      for name in REGISTRY_NAME.findall(node.value) if name in engine_names]
    return found


def test_utils_names_no_engine_type():
    engine_names = engine_type_names()
    assert {'AtomicCheckpointHook', 'CPUDistributedDataParallel'} <= engine_names
    violations = []
    for path in sorted((PACKAGE_ROOT / 'utils').rglob('*.py')):
        violations += engine_type_strings(module_name(path)[0],
                                          path.read_text(encoding='utf-8'), engine_names)
    assert violations == []


ENGINE_STRINGS = '''
"""A docstring may mention mmsape.AtomicCheckpointHook."""
WRAPPER = dict(type='mmsape.CPUDistributedDataParallel')

def hooks():
    return [f'mmsape.TorchRNGStateHook', 'mmsape.SaPE2', 'mmsape.engine']
'''


def test_the_engine_string_check_finds_a_synthetic_violation():
    found = engine_type_strings('mmsape.utils.bad', ENGINE_STRINGS, engine_type_names())
    assert sorted(violation.split(' -> ')[1] for violation in found) == [
        'mmsape.CPUDistributedDataParallel', 'mmsape.TorchRNGStateHook']
