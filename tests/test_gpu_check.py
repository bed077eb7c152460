"""tools/gpu_check.sh: its CPU dry run end to end (on a copy of the tree that must stay
unchanged), the test files it lists, and the rules by which its summary fails."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = 'tools/gpu_check.sh'
sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))
import gpu_check_report as report  # noqa: E402


def listed_tests():
    found = subprocess.run(['bash', SCRIPT, '--list-tests'], cwd=ROOT, capture_output=True,
                           text=True, check=True)
    return found.stdout.split()


def test_listed_test_files_exist():
    """A renamed or removed test file must be renamed in gpu_check.sh as well."""
    files = listed_tests()
    assert files, 'gpu_check.sh --list-tests printed nothing'
    missing = [f for f in files if not (ROOT / f).is_file()]
    assert not missing, f'gpu_check.sh lists test files that do not exist: {missing}'


def copy_tree(dst: Path) -> None:
    """The files a GPU machine receives: tracked and untracked-but-not-ignored ones."""
    names = subprocess.run(['git', 'ls-files', '-z', '-co', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split('\0')
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the work tree is listed too
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def snapshot(tree: Path) -> Dict[str, Tuple[int, int]]:
    return {str(p.relative_to(tree)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in tree.rglob('*')}


def test_cpu_dry_run_writes_a_passing_summary_and_nothing_into_the_tree(tmp_path):
    tree, out = tmp_path / 'tree', tmp_path / 'out'
    copy_tree(tree)
    before = snapshot(tree)
    result = subprocess.run(['bash', str(tree / SCRIPT), '--cpu-dry-run', '--out', str(out)],
                            env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                            text=True, timeout=600)
    log = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, log
    assert snapshot(tree) == before, 'the dry run wrote into the tree'
    assert not (out / 'site').exists(), 'the scratch site folder was left in OUT'

    summary = json.loads((out / 'summary.json').read_text())
    assert summary['passed'] and summary['failures'] == [], log
    assert summary['mode'] == 'cpu-dry-run'
    assert [s['name'] for s in summary['steps']] == ['deps', 'tests', 'compile', 'scan',
                                                     'backbone']
    # The kernels the interpreted tests ran, compiled for sm_90 by the real compiler.
    compiled = json.loads((out / 'compile.json').read_text())
    assert compiled['targets'] == [90] and compiled['results']
    assert all(r['ok'] and not r['spill_stores'] for r in compiled['results'])
    assert 'gpu tests' in {o for r in compiled['results'] for o in r['origins']}
    pytest_counts = summary['pytest']
    assert pytest_counts['tests'] > 0
    assert pytest_counts['failures'] == pytest_counts['errors'] == pytest_counts['skipped'] == 0

    # The tree's own packages were imported, not an installed copy.
    env = summary['env']
    assert Path(env['quadmamba_mm']['path']).resolve().is_relative_to(tree.resolve())
    assert Path(env['quadmamba_kernels']['path']).resolve().is_relative_to(tree.resolve())

    scan = summary['scan']['results']
    assert {r['dtype'] for r in scan} == {'bfloat16', 'float32'}
    assert {'triton', 'chunked'} <= {r['contender'] for r in scan}
    assert len({r['layout'] for r in scan}) == 2

    rows = summary['backbone']['rows']
    assert len(rows) == 2 * 2 * 2  # models x sizes x modes
    assert all(r['ms_per_batch'] and r['error'] is None for r in rows)

    md = (out / 'summary.md').read_text()
    for section in ('# GPU check: CPU dry run', '## Result', 'PASSED', '## Steps',
                    '## Environment', '## Correctness (pytest)', '## Selective scan',
                    '## Backbone throughput and peak memory', '| model | size | batch |'):
        assert section in md, f'summary.md lacks {section!r}'
    backbone_md = (out / 'backbone' / 'benchmark.md').read_text()
    assert backbone_md.startswith('CPU ') and 'ISA ' in backbone_md.splitlines()[0]
    assert 'FAILED' not in md

JUNIT = '''<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0"
failures="1" skipped="1" tests="3" time="1.5"><testcase classname="tests.test_a" name="test_ok"
time="0.1"/><testcase classname="tests.test_a" name="test_gpu" time="0.0"><skipped
type="pytest.skip" message="no CUDA device">skip</skipped></testcase><testcase
classname="tests.test_a" name="test_bad" time="0.1"><failure message="assert 1 == 2">tb
</failure></testcase></testsuite></testsuites>'''


def test_summary_fails_on_a_skip_a_failure_a_timeout_and_a_missing_file(tmp_path):
    (tmp_path / 'pytest.xml').write_text(JUNIT)
    (tmp_path / 'steps.tsv').write_text('tests\t1\t3.2\t150\nscan\t124\t90.0\t90\n')
    summary = report.summarize(tmp_path, dry_run=False, missing_tests=['tests/test_gone.py'])
    assert not summary['passed']
    text = '\n'.join(summary['failures'])
    for expected in ('step scan timed out', 'step tests failed (rc 1)', 'tests/test_gone.py',
                     '1 skipped', 'test_gpu: no CUDA device', '1 failures',
                     'test_bad: assert 1 == 2'):
        assert expected in text, f'{expected!r} not in {text!r}'
    md = report.summary_markdown(summary, None)
    assert '\nFAILED\n' in md and '| scan | timed out | 90.0 | 90 |' in md


def test_no_test_result_is_a_failure(tmp_path):
    summary = report.summarize(tmp_path, dry_run=True, missing_tests=[])
    assert not summary['passed'] and 'no test result' in summary['failures'][0]


def test_wheel_choice_without_pip():
    here = f'cp{sys.version_info[0]}{sys.version_info[1]}'
    assert report.wheel_fits(f'pyyaml-6.0.4-{here}-{here}-manylinux2014_x86_64.'
                             'manylinux_2_17_x86_64.whl')
    assert report.wheel_fits('rich-15.0.0-py3-none-any.whl')
    assert not report.wheel_fits('pyyaml-6.0.4-cp27-cp27mu-manylinux2014_x86_64.whl')
    assert not report.wheel_fits(f'pyyaml-6.0.4-{here}-{here}-macosx_11_0_arm64.whl')
    major, minor = sys.version_info[:2]
    assert report.requires_python_fits(f'>={major}.{minor}')
    assert not report.requires_python_fits(f'>={major}.{minor + 1}')
    assert not report.requires_python_fits(f'>=3.8, !={major}.{minor}.*')
