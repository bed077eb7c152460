"""The compile check: the Triton scan's kernels compiled ahead of time for a real GPU target
with Triton's bundled ptxas, on this machine without a GPU (the interpreter, which the other
tests use on a CPU, accepts code the compiler rejects)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('triton')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compiler_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['PYTHONPATH'] = os.pathsep.join([ROOT, os.path.join(ROOT, 'tests'),
                                        env.get('PYTHONPATH', '')])
    return dict(env, **extra)


def test_backbone_kernels_compile_for_sm90_without_spills(tmp_path):
    """What QuadMamba-Li launches at 224 (training and eval, fp32, bf16 and fp16
    autocast) compiles for sm_90 with no spill, and the backward keeps at least 16 warps
    resident per SM (25% occupancy)."""
    out = tmp_path / 'compile.json'
    done = subprocess.run([sys.executable, '-m', 'quadmamba_kernels.compile_check', '--subset',
                           '--sources', 'backbone', '--targets', '90', '--json', str(out)],
                          env=compiler_env(), capture_output=True, text=True, timeout=1200,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    results = report['results']
    kernels = {r['kernel'] for r in results}
    assert kernels == {'_scan_fwd_kernel', '_scan_bwd_kernel'}
    # bf16 and fp16 autocast inputs and both stage kinds (quadtree with a per-sample index)
    specs = {r['specialisation'] for r in results}
    assert any(' bf16 ' in s for s in specs) and any(' fp16 ' in s for s in specs)
    assert any(s.endswith(' oi') for s in specs) and any(s.endswith(' o') for s in specs)
    for r in results:
        assert r['ok'] and r['spill_stores'] == 0, r
        if r['kernel'] == '_scan_bwd_kernel':
            assert r['warps_per_sm'] >= 16, r
    assert 'QuadMamba-LI 224 train bfloat16' in {o for r in results for o in r['origins']}


def test_a_kernel_the_compiler_rejects_is_reported(tmp_path):
    """The check is not the interpreter: a float global read inside a kernel (which the
    interpreter runs) fails to compile, and the failure names the compiler's error."""
    (tmp_path / 'bad_kernel.py').write_text(textwrap.dedent('''
        import triton
        import triton.language as tl
        SCALE = 1.4426950408889634

        @triton.jit
        def scaled(x_ptr, n, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * SCALE, mask=offs < n)
        '''))
    code = textwrap.dedent('''
        import torch
        from quadmamba_kernels.compile_check import Launch, Pointer, compile_one
        launch = Launch('bad_kernel:scaled', (Pointer('float32', 0), 100), (('BLOCK', 128),))
        result = compile_one(launch, 90)
        print('OK' if result.ok else 'FAILED ' + result.error)
        ''')
    env = compiler_env(PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'FAILED' in done.stdout and 'SCALE' in done.stdout, done.stdout


def test_occupancy_model():
    """Registers per warp round up to 256; warps, programs and shared memory per SM cap it."""
    from quadmamba_kernels.compile_check import occupancy
    assert occupancy(90, 128, 8, 4096) == (2, 16)   # 65536 / (128 * 32 * 8)
    assert occupancy(90, 255, 4, 0) == (2, 8)       # 255 -> 256 registers per thread
    assert occupancy(90, 32, 4, 0) == (16, 64)      # the 64-warp limit
    assert occupancy(86, 64, 4, 60 * 1024) == (1, 4)  # shared memory: 100 KiB per SM
