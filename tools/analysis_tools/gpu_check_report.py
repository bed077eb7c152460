"""Helpers of ``tools/gpu_check.sh``: a pip-less wheel install, and the summary that collects
every step's output and the environment.

    python tools/analysis_tools/gpu_check_report.py unpack-wheels --wheels DIR --target DIR
    python tools/analysis_tools/gpu_check_report.py summary --out DIR [--dry-run]
        [--missing-tests FILE ...]

``summary`` writes ``DIR/summary.json`` and ``DIR/summary.md`` and exits with 1 when a test
failed, errored or was skipped, when no test ran, or when a step failed or timed out.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

TIMEOUT_RC = (124, 137)  # timeout(1): TERM sent; KILL sent after the grace period
# junit count -> the list of the tests behind it
PROBLEM_LISTS = dict(failures='failed', errors='errored', skipped='skipped_tests')


# ---- env -----------------------------------------------------------------------------------
def package_info(module: str) -> Dict[str, Optional[str]]:
    """Version and location without importing (importing triton, timm and mmengine would cost
    seconds each): from the distribution's metadata and the import system's spec."""
    from importlib import metadata, util
    info: Dict[str, Optional[str]] = dict(version=None, path=None)
    try:
        spec = util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        info['error'] = 'not found'
        return info
    info['path'] = os.path.realpath(spec.origin) if spec.origin else None  # links resolved
    dist = dict(quadmamba_mm='quadmamba-mm', quadmamba_kernels='quadmamba-mm').get(module, module)
    try:
        info['version'] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass  # the tree's own packages on PYTHONPATH, not installed
    return info


def collect_env() -> Dict[str, Any]:
    env: Dict[str, Any] = dict(python=platform.python_version(), executable=sys.executable,
                               platform=platform.platform())
    for module in ('torch', 'triton', 'timm', 'numpy', 'mmengine', 'quadmamba_mm',
                   'quadmamba_kernels', 'matplotlib'):
        env[module] = package_info(module)
    try:
        import torch
        env['torch']['version'] = torch.__version__
        env['torch_cuda'] = torch.version.cuda
        env['gpus'] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as e:  # the summary is written whatever is broken
        env['torch_error'] = f'{type(e).__name__}: {e}'
    try:
        smi = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                              '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
        env['nvidia_smi'] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        env['nvidia_smi'] = f'not available ({type(e).__name__})'
    return env


# ---- unpack-wheels -------------------------------------------------------------------------
def wheel_fits(name: str) -> bool:
    """Whether a wheel file name's tags fit this interpreter on x86-64 Linux."""
    parts = name[:-len('.whl')].split('-')
    if len(parts) < 5:
        return False
    py_tags, abi_tags, plat_tags = (set(p.split('.')) for p in parts[-3:])
    cp = f'cp{sys.version_info[0]}{sys.version_info[1]}'
    return bool(py_tags & {'py3', cp, f'py{sys.version_info[0]}{sys.version_info[1]}'}) \
        and bool(abi_tags & {'none', 'abi3', cp}) \
        and any(p == 'any' or (p.startswith('manylinux') and p.endswith('x86_64'))
                for p in plat_tags)


def requires_python_fits(spec: str) -> bool:
    """A wheel's ``Requires-Python`` against this interpreter (comparisons of dotted numbers;
    anything else is taken as fitting)."""
    here = sys.version_info[:3]
    ops = {'>=': lambda a, b: a >= b, '>': lambda a, b: a > b, '<=': lambda a, b: a <= b,
           '<': lambda a, b: a < b, '==': lambda a, b: a[:len(b)] == b,
           '!=': lambda a, b: a[:len(b)] != b}
    for part in filter(None, (p.strip() for p in spec.split(','))):
        found = re.fullmatch(r'(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)(?:\.\*)?', part)
        if found and not ops[found.group(1)](here, tuple(map(int, found.group(2).split('.')))):
            return False
    return True


def version_key(version: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r'[.+-]', version))


def unpack_wheels(wheels: Path, target: Path) -> List[str]:
    """Extracts into ``target``, for every project in ``wheels``, the newest wheel that fits
    this interpreter (the fallback where ``python -m pip`` is missing: every project there is
    a needed one, tomli included, which Python >= 3.11 merely ignores)."""
    best: Dict[str, Tuple[tuple, Path]] = {}
    for wheel in sorted(wheels.glob('*.whl')):
        if not wheel_fits(wheel.name):
            continue
        with zipfile.ZipFile(wheel) as z:
            meta = next((n for n in z.namelist() if n.endswith('.dist-info/METADATA')), None)
            text = z.read(meta).decode('utf-8', 'replace') if meta else ''
        found = re.search(r'^Requires-Python:\s*(.+)$', text, re.M)
        if found and not requires_python_fits(found.group(1)):
            continue
        project, version = wheel.name.split('-')[:2]
        project = re.sub(r'[-_.]+', '_', project).lower()
        if project not in best or version_key(version) > best[project][0]:
            best[project] = (version_key(version), wheel)
    if not best:
        raise SystemExit(f'no wheel in {wheels} fits Python {platform.python_version()} '
                         'on x86-64 Linux')
    target.mkdir(parents=True, exist_ok=True)
    for _, wheel in best.values():
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
    return sorted(w.name for _, w in best.values())


# ---- summary -------------------------------------------------------------------------------
def read_steps(out: Path) -> List[Dict[str, Any]]:
    steps = []
    path = out / 'steps.tsv'
    for line in path.read_text().splitlines() if path.exists() else []:
        name, rc, seconds, limit = line.split('\t')
        rc_i = int(rc)
        status = 'ok' if rc_i == 0 else ('timed out' if rc_i in TIMEOUT_RC else f'failed (rc {rc})')
        steps.append(dict(name=name, rc=rc_i, seconds=float(seconds), limit_s=int(limit),
                          status=status))
    return steps


def read_junit(path: Path) -> Dict[str, Any]:
    """Counts and the names of failed, errored and skipped tests from pytest's JUnit XML."""
    if not path.exists():
        return dict(found=False)
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ('tests', 'failures', 'errors', 'skipped')}
    problems: Dict[str, List[str]] = {PROBLEM_LISTS[k]: [] for k in PROBLEM_LISTS}
    for case in root.iter('testcase'):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag, key in (('failure', 'failures'), ('error', 'errors'), ('skipped', 'skipped')):
            for found in case.findall(tag):
                message = (found.get('message') or '').strip()[:300]
                problems[PROBLEM_LISTS[key]].append(f'{name}: {message}')
    seconds = sum(float(s.get('time', 0)) for s in suites)
    return dict(found=True, seconds=seconds, **counts, **problems)


def load_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def scan_table(data: Dict[str, Any]) -> List[str]:
    lines = [f"device {data['device']}, torch {data['torch']}, median of {data['repeat']}"
             + (f", device copy {data['copy_GBps']:.0f} GB/s" if data.get('copy_GBps') else ''),
             '', '| inputs | shape (B K D N L) | layout | contender | fwd ms | fwd+bwd ms '
             '| fwd GB/s | of copy |', '|---|---|---|---|---:|---:|---:|---:|']
    for r in data['results']:
        shape = ' '.join(str(v) for v in r['shape'].values())
        gbps = '-' if r['fwd_GBps'] is None else f"{r['fwd_GBps']:.0f}"
        share = '-' if r['fraction_of_copy'] is None else f"{r['fraction_of_copy']:.0%}"
        lines.append(f"| {r['dtype']} | {shape} | {r['layout']} | {r['contender']} | "
                     f"{r['fwd_ms']:.3f} | "
                     f"{r['fwd_bwd_ms']:.3f} | {gbps} | {share} |")
    return lines


def summarize(out: Path, dry_run: bool, missing_tests: List[str]) -> Dict[str, Any]:
    steps = read_steps(out)
    pytest = read_junit(out / 'pytest.xml')
    failures: List[str] = []
    warnings: List[str] = []
    for step in steps:
        if step['rc'] != 0:
            failures.append(f"step {step['name']} {step['status']} after {step['seconds']:.0f} s "
                            f"(limit {step['limit_s']} s; log: logs/{step['name']}.log)")
    if missing_tests:
        failures.append(f"test files listed in gpu_check.sh but missing: {' '.join(missing_tests)}")
    if not pytest.get('found'):
        failures.append('pytest wrote no pytest.xml: no test result')
    else:
        if pytest['tests'] == 0:
            failures.append('pytest ran no test')
        for key, names in PROBLEM_LISTS.items():
            if pytest[key]:
                failures.append(f'pytest: {pytest[key]} {key} (every listed test must run and '
                                f'pass): ' + '; '.join(pytest[names][:5]))
    scan = load_json(out / 'scan.json')
    backbone = load_json(out / 'backbone' / 'benchmark.json')
    if backbone:
        for row in backbone['rows']:
            if row['error']:
                warnings.append(f"{row['model']} at {row['size'][0]}x{row['size'][1]}, batch "
                                f"{row['batch']}, {row['mode']}: {row['error']}")
    return dict(mode='cpu-dry-run' if dry_run else 'gpu', passed=not failures,
                failures=failures, warnings=warnings, written=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                steps=steps, env=collect_env(), pytest=pytest, scan=scan,
                backbone=backbone)


def summary_markdown(summary: Dict[str, Any], backbone_md: Optional[str]) -> str:
    dry = summary['mode'] == 'cpu-dry-run'
    title = ('# GPU check: CPU dry run (tiny shapes; the numbers measure nothing)' if dry
             else '# GPU check')
    lines = [title, '', f"Written {summary['written']}.", '',
             '## Result', '', 'PASSED' if summary['passed'] else 'FAILED', '']
    lines += [f'- {f}' for f in summary['failures']]
    lines += [f'- warning: {w}' for w in summary['warnings']]
    lines += ['', '## Steps', '', '| step | status | seconds | limit s |', '|---|---|---:|---:|']
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['limit_s']} |"
              for s in summary['steps']]
    total = sum(s['seconds'] for s in summary['steps'])
    budget = sum(s['limit_s'] for s in summary['steps'])
    lines += ['', f'Total {total:.0f} s of the steps\' {budget} s of limits.', '',
              '## Environment', '']
    env = summary['env'] or {}
    for key, value in env.items():
        if isinstance(value, dict):
            value = value.get('version') or value.get('error') or '-'
            if env[key].get('path') and key.startswith('quadmamba'):
                value = f"{value} ({env[key]['path']})"
        lines.append(f'- {key}: {value}')
    lines += ['', '## Correctness (pytest)', '']
    pytest = summary['pytest']
    if pytest.get('found'):
        lines.append(f"{pytest['tests']} tests, {pytest['failures']} failures, "
                     f"{pytest['errors']} errors, {pytest['skipped']} skipped, "
                     f"{pytest['seconds']:.1f} s.")
        for key, names in PROBLEM_LISTS.items():
            lines += [f'- {key}: {n}' for n in pytest[names]]
    else:
        lines.append('No result (pytest.xml missing).')
    lines += ['', '## Selective scan', '']
    lines += scan_table(summary['scan']) if summary['scan'] else ['No result.']
    lines += ['', '## Backbone throughput and peak memory', '',
              backbone_md.strip() if backbone_md else 'No result.']
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    unpack = sub.add_parser('unpack-wheels', help='extract the wheels that fit this Python')
    unpack.add_argument('--wheels', type=Path, required=True)
    unpack.add_argument('--target', type=Path, required=True)
    summary = sub.add_parser('summary', help='write DIR/summary.json and DIR/summary.md')
    summary.add_argument('--out', type=Path, required=True)
    summary.add_argument('--dry-run', action='store_true')
    summary.add_argument('--missing-tests', nargs='*', default=[])
    args = parser.parse_args(argv)

    if args.command == 'unpack-wheels':
        for name in unpack_wheels(args.wheels, args.target):
            print(f'unpacked {name}')
        return 0
    result = summarize(args.out, args.dry_run, args.missing_tests)
    backbone_md = args.out / 'backbone' / 'benchmark.md'
    (args.out / 'summary.json').write_text(json.dumps(result, indent=1))
    (args.out / 'summary.md').write_text(summary_markdown(
        result, backbone_md.read_text() if backbone_md.exists() else None))
    print(f"summary: {args.out / 'summary.md'} and {args.out / 'summary.json'}")
    print('RESULT: ' + ('PASSED' if result['passed'] else 'FAILED'))
    for failure in result['failures']:
        print(f'  - {failure}')
    return 0 if result['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())
