"""Every Python file of the project runs on the oldest Python that setup.cfg allows.

Newer syntax fails at parse time; newer typing forms fail only when an annotation is
evaluated (at import), so they are looked for in the syntax tree.
"""
import ast
import configparser
import re
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]

# typing names that do not exist in older Pythons: importing them fails at import time.
TYPING_ADDED = {
    (3, 10): {'TypeAlias', 'ParamSpec', 'Concatenate', 'TypeGuard', 'ParamSpecArgs',
              'ParamSpecKwargs', 'is_typeddict'},
    (3, 11): {'Self', 'LiteralString', 'Never', 'assert_never', 'assert_type', 'reveal_type',
              'Required', 'NotRequired', 'Unpack', 'TypeVarTuple', 'dataclass_transform'},
    (3, 12): {'override', 'TypeAliasType'},
}
# Builtins subscriptable in annotations from Python 3.9 on, and their typing names before.
BUILTIN_GENERICS = {'list': 'List', 'dict': 'Dict', 'tuple': 'Tuple', 'set': 'Set',
                    'frozenset': 'FrozenSet', 'type': 'Type'}


def oldest_python() -> Tuple[int, int]:
    """The lowest version ``python_requires`` in setup.cfg allows, e.g. (3, 9)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    spec = cfg.get('options', 'python_requires')
    found = re.fullmatch(r'\s*>=\s*(\d+)\.(\d+)\s*', spec)
    assert found, f'python_requires should read ">=X.Y", got {spec!r}'
    return int(found.group(1)), int(found.group(2))


def python_files() -> List[Path]:
    """Tracked and new (not ignored) .py files; every .py file outside build and venv folders
    where git is not available."""
    try:
        listed = subprocess.run(
            ['git', 'ls-files', '--cached', '--others', '--exclude-standard', '*.py'],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        files = [ROOT / name for name in listed]
    except (OSError, subprocess.CalledProcessError):
        skip = {'.venv', 'build', 'dist', 'work_dirs', 'data', '.git'}
        files = [p for p in ROOT.rglob('*.py')
                 if not skip & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in files if p.is_file())


def _annotations(tree: ast.AST, local: bool = False):
    """The annotations Python evaluates when the module is imported: function arguments and
    returns, and module- or class-level variable annotations (those inside a function body
    are never evaluated; ``local=True`` adds them)."""
    def visit(node, in_function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            for arg in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg,
                                                                           args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    yield arg.annotation
            if getattr(node, 'returns', None) is not None:
                yield node.returns
            in_function = True
        elif isinstance(node, ast.ClassDef):
            in_function = False
        elif isinstance(node, ast.AnnAssign) and (local or not in_function):
            yield node.annotation
        for child in ast.iter_child_nodes(node):
            yield from visit(child, in_function)
    yield from visit(tree, False)


def _is_none_union(node: ast.AST) -> bool:
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
            and any(isinstance(side, ast.Constant) and side.value is None
                    for side in (node.left, node.right)))


def version_problems(source: str, oldest: Tuple[int, int], name: str = '<source>') -> List[str]:
    """What in ``source`` needs a Python newer than ``oldest``, one line per finding."""
    try:
        tree = ast.parse(source, name, feature_version=oldest)
    except SyntaxError as error:
        return [f'{name}:{error.lineno}: syntax newer than Python {oldest[0]}.{oldest[1]}: '
                f'{error.msg}']
    problems = []
    postponed = any(isinstance(node, ast.ImportFrom) and node.module == '__future__' and
                    any(alias.name == 'annotations' for alias in node.names)
                    for node in tree.body)
    fix = 'or add "from __future__ import annotations"'
    if not postponed:
        for annotation in _annotations(tree):
            text = ast.unparse(annotation)
            for node in ast.walk(annotation):
                if (oldest < (3, 10) and isinstance(node, ast.BinOp)
                        and isinstance(node.op, ast.BitOr)):
                    problems.append(f'{name}:{node.lineno}: the annotation {text!r} uses X | Y, '
                                    f'which needs Python 3.10; use Optional/Union {fix}')
                elif (oldest < (3, 9) and isinstance(node, ast.Subscript)
                      and isinstance(node.value, ast.Name) and node.value.id in BUILTIN_GENERICS):
                    problems.append(f'{name}:{node.lineno}: the annotation {text!r} subscripts '
                                    f'the builtin {node.value.id}, which needs Python 3.9; use '
                                    f'typing.{BUILTIN_GENERICS[node.value.id]} {fix}')
    # Annotations are never evaluated as expressions below (postponed or local ones included).
    in_annotations = {id(node) for annotation in _annotations(tree, local=True)
                      for node in ast.walk(annotation)}
    for node in ast.walk(tree):
        if oldest < (3, 10) and _is_none_union(node) and id(node) not in in_annotations:
            # `X | None` evaluated at run time (isinstance, aliases): no import postpones it.
            problems.append(f'{name}:{node.lineno}: {ast.unparse(node)!r} is a type union, '
                            'which needs Python 3.10 outside annotations; use Optional')
        elif isinstance(node, ast.ImportFrom) and node.module == 'typing':
            for alias in node.names:
                for version, added in TYPING_ADDED.items():
                    if oldest < version and alias.name in added:
                        problems.append(f'{name}:{node.lineno}: typing.{alias.name} needs '
                                        f'Python {version[0]}.{version[1]}; import it from '
                                        'typing_extensions')
        elif (oldest < (3, 10) and isinstance(node, ast.Call)
              and isinstance(node.func, ast.Name) and node.func.id == 'zip'
              and any(keyword.arg == 'strict' for keyword in node.keywords)):
            problems.append(f'{name}:{node.lineno}: zip(strict=...) needs Python 3.10')
    return problems


def test_python_requires_is_what_this_check_reads():
    assert oldest_python() == (3, 9)


def test_every_python_file_runs_on_the_oldest_supported_python():
    oldest = oldest_python()
    files = python_files()
    assert any(p.name == 'launch.py' for p in files), 'the file listing found no package files'
    problems = []
    for path in files:
        problems += version_problems(path.read_text(encoding='utf-8'), oldest,
                                     str(path.relative_to(ROOT)))
    assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('snippet, expected', [
    ('def f(x: str | None) -> int: ...', 'needs Python 3.10'),
    ('def f() -> "int":\n    pass\nclass A:\n    x: int | None = None', 'needs Python 3.10'),
    ('match x:\n    case 1: pass', 'syntax newer than Python 3.9'),
    ('Alias = int | None', 'type union'),
    ('ok = isinstance(x, (int, type(None)))\nfrom typing import TypeAlias', 'typing.TypeAlias'),
    ('pairs = list(zip(a, b, strict=True))', 'zip(strict=...)'),
])
def test_the_check_finds_newer_python(snippet, expected):
    problems = version_problems(snippet, (3, 9))
    assert problems and expected in problems[0], problems


@pytest.mark.parametrize('snippet', [
    'from __future__ import annotations\ndef f(x: str | None) -> list[int]: ...',
    'from typing import Optional\ndef f(x: Optional[str]) -> list[int]: ...',
    'def f():\n    y: int | None = None\n    return y',   # local annotations are not evaluated
    'flags = 1 | 2\ndef f(x: "str | None"): ...',
    'def f(x: dict[str, tuple[int, ...]]) -> type[int]: ...',  # builtin generics: Python 3.9
])
def test_the_check_accepts_python_3_9_code(snippet):
    assert version_problems(snippet, (3, 9)) == []


def test_builtin_generics_are_found_below_python_3_9():
    problems = version_problems('def f(x: list[int]): ...', (3, 8))
    assert problems and 'subscripts the builtin list' in problems[0]
