"""tools/analysis_tools/benchmark.py: the size sweep, its outputs, memory and arguments."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / 'tools' / 'analysis_tools' / 'benchmark.py'
sys.path.insert(0, str(TOOL.parent))
import benchmark  # noqa: E402
import benchmark_lib  # noqa: E402


def run_tool(*args):
    result = subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                            text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_sweep_writes_table_json_and_figure(tmp_path):
    """Two models (one of them rebuilt per size), two sizes with their own batch sizes, both
    modes. Memory is measured in its own test (a fresh process per row)."""
    out = run_tool('quadmamba:li', 'timm:swin_tiny_patch4_window7_224', '--sizes', 64, 96,
                   '--batch-size', 2, 1, '--modes', 'infer', 'train', '--warmup', 0,
                   '--repeat', 1, '--memory', 'none', '--out', tmp_path)
    first = out.splitlines()[0]
    for field in ('CPU ', 'ISA ', 'torch threads', f'torch {torch.__version__}', 'AMP off',
                  'channels_last off'):
        assert field in first, f'{field!r} not in the first line {first!r}'

    result = json.loads((tmp_path / 'benchmark.json').read_text())
    rows = result['rows']
    assert [(r['model'].split(':')[0], r['size'][0], r['batch'], r['mode']) for r in rows] == [
        (model, size, batch, mode) for size, batch in ((64, 2), (96, 1))
        for mode in ('infer', 'train') for model in ('quadmamba', 'timm')]
    for r in rows:
        assert r['error'] is None and len(r['times_ms']) == 1
        assert r['ms_per_image'] == pytest.approx(r['ms_per_batch'] / r['batch'])
        assert r['peak_mib'] is None
    assert result['memory_method'] is None

    # Swin is rebuilt for each size and the output says how.
    notes = result['notes']['timm:swin_tiny_patch4_window7_224']
    assert set(notes) == {'64x64', '96x96'}
    assert 'img_size=96x96' in notes['96x96'] and 'padded to 28x28' in notes['96x96']
    assert result['notes']['quadmamba:li'] == {}

    md = (tmp_path / 'benchmark.md').read_text()
    assert md.splitlines()[0] == first
    assert md.count('| quadmamba:li |') == 4 and 'peak MiB: not measured' in md
    assert (tmp_path / 'benchmark.png').stat().st_size > 10_000


def test_profile_splits_the_step_time():
    """--profile: dense layers, the scan and the rest, per model; the scan's share is zero for
    a model without one."""
    args = benchmark.parse_args(['quadmamba:li', 'timm:convnext_tiny', '--shape', '64',
                                 '--warmup', '1', '--repeat', '1', '--memory', 'none',
                                 '--profile'])
    result = benchmark.run(args)
    splits = {r['model']: r['split_ms'] for r in result['rows']}
    assert splits['quadmamba:li']['scan'] > 0 and splits['timm:convnext_tiny']['scan'] == 0
    for split in splits.values():
        assert split['dense'] > 0 and split['rest'] > 0
    md = benchmark.markdown(result)
    assert md.count('| quadmamba:li |') == 2 and 'rest removed' in md  # timing + split rows


def test_cpu_peak_memory_from_fresh_processes():
    """A training step holds activations and gradients that inference does not; both add
    to the weights (5.5 M fp32 parameters of QuadMamba-Li)."""
    args = benchmark.parse_args(['quadmamba:li'])
    found = {mode: benchmark.measure_cpu_memory(args, 'quadmamba:li', (64, 64), 2, mode)
             for mode in ('infer', 'train')}
    assert found['train']['step_bytes'] > found['infer']['step_bytes'] > 0
    assert found['train']['step_bytes'] > found['train']['weight_bytes'] > 20 * 2**20
    assert 'fresh process' in found['train']['method']


def test_plot_redraws_the_figure_from_json(tmp_path):
    result = dict(header='CPU x | ISA y', memory_method='m', settings=dict(repeat=1, warmup=0),
                  notes={}, rows=[
                      dict(model=m, size=[s, s], batch=1, mode=mode, ms_per_batch=t,
                           ms_per_image=t, images_per_s=1e3 / t, vs_first=None, peak_mib=t * 2,
                           error=None)
                      for m in ('a', 'b') for s, t in ((224, 1.0), (512, 4.0))
                      for mode in ('infer', 'train')])
    path = tmp_path / 'benchmark.json'
    path.write_text(json.dumps(result))
    benchmark.main(['--plot', str(path)])
    assert (tmp_path / 'benchmark.png').stat().st_size > 10_000


@pytest.mark.parametrize('args, message', [
    (['quadmamba:li', '--sizes', '64', '96', '--batch-size', '1', '2', '3'],
     'one value or one per size \\(2\\), got 3'),
    (['quadmamba:li', '--sizes', '64', '--shape', '64'], 'not both'),
    (['quadmamba:li', '--train', '--modes', 'infer'], '--train is short for --modes train'),
    (['quadmamba:li', '--tf32'], '--tf32 applies to CUDA runs only'),
    (['quadmamba:li', '--profile', '--device', 'meta'], '--profile splits CPU time'),
    ([], 'expected at least one MODEL'),
])
def test_bad_arguments_say_what_was_expected(args, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(args)
    assert re.search(message, capsys.readouterr().err)


def test_single_size_options_keep_working():
    args = benchmark.parse_args(['quadmamba:li', '--shape', '64', '48', '--batch-size', '3',
                                 '--train'])
    assert args.size_list == [(64, 48)] and args.batch_list == [3] and args.modes == ['train']
    args = benchmark.parse_args(['quadmamba:li'])
    assert args.size_list == [(224, 224)] and args.modes == ['infer']


def test_header_line_names_the_machine_and_the_gpu_settings():
    info = benchmark_lib.machine_info(torch.device('cpu'), 'bf16', True)
    line = benchmark_lib.header_line(info)
    assert line.startswith(f"CPU {info['cpu']} | ISA {info['cpu_isa']} | ")
    assert 'AMP bf16' in line and 'channels_last on' in line and 'GPU' not in line
    info.update(gpu='NVIDIA H100', cuda='12.8', tf32_matmul=False, tf32_cudnn=False)
    line = benchmark_lib.header_line(info)
    assert 'GPU NVIDIA H100 (CUDA 12.8)' in line and 'TF32 matmul off, cuDNN off' in line


def test_peak_rss_resets_and_sees_a_new_allocation():
    """The CPU memory probe's mechanism: VmHWM reset to the current RSS, then raised by a
    fresh 64 MiB buffer that is written to."""
    if not benchmark_lib._reset_peak_rss():
        pytest.skip('/proc/self/clear_refs is not writable here')
    before = benchmark_lib._status_kib('VmRSS')
    buffer = torch.ones(64 * 2**20 // 4)
    grown = benchmark_lib._status_kib('VmHWM') - before
    del buffer
    assert 60 * 1024 < grown < 200 * 1024


def test_padded_maps():
    assert benchmark_lib.padded_maps((512, 512), 7) == '128->133, 64->70, 32->35, 16->21'
    assert benchmark_lib.padded_maps((224, 224), 7) == '56, 28, 14, 7'


def test_mmpretrain_swin_is_built_for_the_size():
    """mmpretrain's Swin takes other sizes by padding its windows; at 64 px the last maps
    are smaller than a window, which needs pad_small_map."""
    spec = 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py'
    assert benchmark_lib.size_dependent(spec)
    model, note = benchmark_lib.build_model(spec, (64, 64))
    assert 'img_size=64x64' in note and 'pad_small_map=True' in note, note
    with torch.no_grad():
        out = benchmark_lib.tensors_in(model.eval()(torch.randn(1, 3, 64, 64)))
    assert out and all(torch.isfinite(t).all() for t in out)
