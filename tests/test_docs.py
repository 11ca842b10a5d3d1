"""Every markdown document the repository cites is in it, with the cited sections.

A ``.py`` or ``.md`` file of the repository that names a markdown document
(``docs/method.md``, ``README.md``, ``../benchmarks/README.md``) must name one
that exists, relative to the repository root or to the citing file; an anchor it
cites (``docs/method.md#8-sape-published``, or ``[...](#0-conventions)`` inside
a markdown file) must be a heading or an explicit ``<a id="...">`` of the cited
document. The equations of ``docs/method.md`` are numbered by section and stated
once, and the numbers the code cites exist.
"""
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Set

ROOT = Path(__file__).resolve().parents[1]
METHOD = 'docs/method.md'
# This file's own examples of broken references are made to be broken.
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

_URL = re.compile(r'[a-z][a-z0-9+.-]*://\S+', re.IGNORECASE)
# A markdown path as a whole token: not the tail of a longer path or of a shell
# or template variable ($OUT/report.md, {out_dir}/README.md), which name
# generated files rather than documents of the repository.
_MD_REFERENCE = re.compile(r'(?<![\w$/{}.-])([\w./-]*[\w-]\.md)(?:#([\w-]+))?(?![\w/-])')
_LOCAL_LINK = re.compile(r'\]\(#([^)\s]+)\)')
_EXPLICIT_ANCHOR = re.compile(r'<a\s+(?:id|name)="([^"]+)"')
_HEADING = re.compile(r'^#{1,6}\s+(.+?)\s*#*\s*$')
_FENCE = re.compile(r'^\s*(```|~~~)')
_SECTION = re.compile(r'^##\s+(\d+)\.\s')
_EQUATION_LABEL = re.compile(r'^\((\d+)\.(\d+)\)\s')
# 'eq. (9.1)', 'eqs. (8.1)', '(8.1)-(8.5)'.
_EQUATION_CITATION = re.compile(r'\beqs?\. \((\d+\.\d+)\)|\((\d+\.\d+)\)-\((\d+\.\d+)\)')


def repository_files(root: Path) -> List[str]:
    """Paths (relative to ``root``) of the files a commit would hold: tracked
    files plus untracked ones that git does not ignore; every file where
    ``root`` is no git checkout."""
    try:
        listing = subprocess.run(
            ['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=root,
            capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        skipped = {'.git', '.venv', 'work_dirs', 'data', 'build'}
        return sorted(str(p.relative_to(root)) for p in root.rglob('*')
                      if p.is_file() and not skipped & set(p.relative_to(root).parts))
    return sorted(line for line in listing.splitlines() if (root / line).is_file())


def markdown_anchors(text: str) -> Set[str]:
    """Anchors of a markdown document: explicit ``<a id>`` / ``<a name>`` and
    GitHub's slugs of its headings (outside fenced code)."""
    anchors = set(_EXPLICIT_ANCHOR.findall(text))
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        heading = None if in_fence else _HEADING.match(line)
        if heading:
            anchors.add(github_slug(heading[1]))
    return anchors


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped,
    spaces to hyphens."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def broken_references(root: Path, files: Iterable[str]) -> List[str]:
    """``'<file>:<line>: <problem>'`` for every markdown reference of ``files``
    (``.py`` and ``.md``) that names no document of ``root`` or a missing anchor."""
    existing = set(repository_files(root))
    anchors: Dict[str, Set[str]] = {}

    def anchors_of(document: str) -> Set[str]:
        if document not in anchors:
            anchors[document] = markdown_anchors((root / document).read_text(encoding='utf-8'))
        return anchors[document]

    problems = []
    for name in files:
        if not name.endswith(('.py', '.md')):
            continue
        text = (root / name).read_text(encoding='utf-8')
        for number, line in enumerate(text.splitlines(), 1):
            line = _URL.sub('', line)
            for path, anchor in _MD_REFERENCE.findall(line):
                candidates = [(Path(name).parent / path).as_posix(), path]
                document = next((c for c in map(_normalise, candidates) if c in existing), None)
                if document is None:
                    problems.append(f'{name}:{number}: {path} is not a document of the '
                                    f'repository (relative to the root or to {name})')
                elif anchor and anchor not in anchors_of(document):
                    problems.append(f'{name}:{number}: {document} has no section #{anchor}')
            if name.endswith('.md'):
                for anchor in _LOCAL_LINK.findall(line):
                    if anchor not in anchors_of(name):
                        problems.append(f'{name}:{number}: no section #{anchor} in this file')
    return problems


def _normalise(path: str) -> str:
    parts: List[str] = []
    for part in path.split('/'):
        if part == '..':
            if not parts:
                return '../' + path  # above the root: never a document of it
            parts.pop()
        elif part not in ('', '.'):
            parts.append(part)
    return '/'.join(parts)


def equation_sections(text: str) -> Dict[str, List[int]]:
    """Equation label ``'N.M'`` -> the numbers of the sections that state it."""
    labels: Dict[str, List[int]] = {}
    section = None
    for line in text.splitlines():
        heading = _SECTION.match(line)
        if heading:
            section = int(heading[1])
        label = _EQUATION_LABEL.match(line)
        if label:
            labels.setdefault(f'{label[1]}.{label[2]}', []).append(section)
    return labels


def test_cited_documents_and_sections_exist():
    files = [name for name in repository_files(ROOT) if name != THIS_FILE]
    problems = broken_references(ROOT, files)
    assert not problems, 'Broken document references:\n' + '\n'.join(problems)


def test_code_cites_the_method_reference():
    # Guards the scanner: the SaPE² sources cite sections of docs/method.md,
    # and a reference check that saw none of them would check nothing.
    citing = {}
    for name in ('mmsape/models/pos_encodings/sape2.py', 'mmsape/ops/sape2/functional.py'):
        citing[name] = {anchor for path, anchor in
                        _MD_REFERENCE.findall((ROOT / name).read_text(encoding='utf-8'))
                        if path == METHOD}
    assert all('8-sape-published' in anchors for anchors in citing.values()), citing
    assert not (ROOT / 'position-encodings.md').exists()


def test_method_equations_are_stated_once_in_their_section():
    labels = equation_sections((ROOT / METHOD).read_text(encoding='utf-8'))
    assert len(labels) >= 30, sorted(labels)
    for label, sections in labels.items():
        assert sections == [int(label.split('.')[0])], (
            f'({label}) is stated in sections {sections}; state it once, in section '
            f'{label.split(".")[0]}')


def test_equation_numbers_cited_by_the_code_exist():
    labels = equation_sections((ROOT / METHOD).read_text(encoding='utf-8'))
    cited = []
    for name in repository_files(ROOT):
        if not name.endswith('.py') or name == THIS_FILE:
            continue
        text = (ROOT / name).read_text(encoding='utf-8')
        if METHOD not in text:
            continue
        for match in _EQUATION_CITATION.finditer(text):
            cited += [(name, label) for label in match.groups() if label]
    assert cited, 'no file cites an equation of docs/method.md'
    missing = [f'{name}: ({label})' for name, label in cited if label not in labels]
    assert not missing, f'Equations cited but not in {METHOD}: {missing}'


def test_the_checks_find_what_is_broken(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'guide.md').write_text(
        '# Guide\n<a id="2-two"></a>\n## 2. Two\n```\n# not a heading\n```\n'
        'See [one](#1-one) and [two](#2-two); also [the readme](../README.md).\n')
    (tmp_path / 'README.md').write_text('Read docs/guide.md#2-two and docs/guide.md#guide.\n')
    (tmp_path / 'module.py').write_text(
        '"""See docs/guide.md#3-three, notes.md and $OUT/report.md; write {out}/x.md."""\n'
        '# https://example.org/elsewhere.md is a link, not a document of the repository\n')
    problems = broken_references(tmp_path, repository_files(tmp_path))
    assert sorted(problems) == sorted([
        'docs/guide.md:7: no section #1-one in this file',
        'module.py:1: docs/guide.md has no section #3-three',
        'module.py:1: notes.md is not a document of the repository (relative to the root '
        'or to module.py)',
    ])
    assert github_slug('8. SaPE², published') == '8-sape²-published'
    assert 'not-a-heading' not in markdown_anchors((tmp_path / 'docs' / 'guide.md').read_text())
    assert equation_sections('## 3. X\n```\n(3.1)  a = b\n(4.1)  c\n```\n## 4. Y\n(4.1) d\n') == {
        '3.1': [3], '4.1': [3, 4]}
