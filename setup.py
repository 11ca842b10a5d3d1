"""mmsape: semantic-aware and conditional position encodings for OpenMMLab ViTs."""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup


def read_version() -> str:
    namespace: dict = {}
    with open(osp.join(osp.dirname(__file__), 'mmsape', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def read_requirements(name: str) -> list:
    """Requirement lines of ``requirements/<name>.txt`` (comments dropped)."""
    path = osp.join(osp.dirname(__file__), 'requirements', f'{name}.txt')
    with open(path) as f:
        lines = (line.split('#')[0].strip() for line in f)
        return [line for line in lines if line]


def add_mim_extension() -> None:
    """Put the configs and tools in the package, under ``mmsape/.mim``, where
    OpenMMLab's ``mim`` looks for a package's ``tools/train.py``,
    ``tools/test.py`` and configs (``mim train mmsape CONFIG``).

    As mmdet's setup.py does: links to the repository's folders for an editable
    install (``develop``, or ``editable_wheel`` under PEP 660), so the repository
    stays the only copy; copies when building a wheel or an sdist.
    """
    if {'develop', 'editable_wheel'} & set(sys.argv):
        mode = 'symlink'
    elif {'bdist_wheel', 'sdist'} & set(sys.argv):
        mode = 'copy'
    else:
        return
    repo = osp.dirname(osp.abspath(__file__))
    mim_dir = osp.join(repo, 'mmsape', '.mim')
    os.makedirs(mim_dir, exist_ok=True)
    for name in ('configs', 'tools'):
        source, target = osp.join(repo, name), osp.join(mim_dir, name)
        if not osp.isdir(source):  # building from an sdist, which carries the copies
            continue
        if osp.islink(target) or osp.isfile(target):
            os.remove(target)
        elif osp.isdir(target):
            shutil.rmtree(target)
        if mode == 'symlink':
            os.symlink(osp.relpath(source, mim_dir), target)
        else:
            shutil.copytree(source, target,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


add_mim_extension()
setup(
    name='mmsape',
    version=read_version(),
    description='Content-aware position encodings (SaPE2, CPVT PEG) and '
    'baselines for OpenMMLab vision transformers',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmsape', 'mmsape.*']),
    package_data={'mmsape': [
        # C++ sources and the header they include, built on first use by
        # torch.utils.cpp_extension (see mmsape/ops/sape2/sape2_attention_cpu.py)
        'ops/sape2/csrc/*.cpp', 'ops/sape2/csrc/*.h',
        # for mim (see add_mim_extension)
        '.mim/configs/**/*.py', '.mim/tools/**/*.py', '.mim/tools/**/*.sh',
    ]},
    python_requires='>=3.9',
    # torch and mmcv are installed by tools/setup_env.sh (they need special handling).
    install_requires=[
        r for r in read_requirements('runtime') if not r.startswith('setuptools')
    ],
    extras_require={'tests': read_requirements('tests')},
    license='Apache License 2.0',
    zip_safe=False,
)
