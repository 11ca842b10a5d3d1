"""mmsape: semantic-aware and conditional position encodings for OpenMMLab ViTs."""
import os.path as osp

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


setup(
    name='mmsape',
    version=read_version(),
    description='Content-aware position encodings (SaPE2, CPVT PEG) and '
    'baselines for OpenMMLab vision transformers',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmsape', 'mmsape.*']),
    # C++ sources built on first use by torch.utils.cpp_extension (see
    # mmsape/ops/sape2/sape2_attention_cpu.py).
    package_data={'mmsape': ['ops/sape2/csrc/*.cpp']},
    python_requires='>=3.9',
    # torch and mmcv are installed by tools/setup_env.sh (they need special handling).
    install_requires=[
        r for r in read_requirements('runtime') if not r.startswith('setuptools')
    ],
    extras_require={'tests': read_requirements('tests')},
    license='Apache License 2.0',
    zip_safe=False,
)
