"""Ahead-of-time compile check of the Triton scan for real GPUs, on a machine without one.

    python -m quadmamba_kernels.compile_check [--targets 80 86 89 90 ...] [--json FILE]
        [--sources backbone benchmark tests] [--subset] [--jobs N]

Triton compiles for a GPU target with its own LLVM and its bundled ``ptxas``: no GPU and no
driver are needed. The kernel specialisations come from the real host code: the backbone,
the scan benchmark and the GPU tests run their launch code on fake CUDA tensors (or, for the
tests, on the CPU through Triton's interpreter) while every launch of the scan kernels is
recorded (:data:`~.triton_scan.LAUNCH_OBSERVERS`), with its block sizes, constexprs,
launch options, argument dtypes, integer values and pointer alignments. Each distinct
specialisation is then compiled for every target, and ``ptxas -v`` says what it costs:
registers, spill bytes, stack, shared memory; with the warps per program these give the
theoretical occupancy.

Sources:
    backbone: QuadMamba li/t/s/b at 224 and S at 512 and 1024, training (forward and the
        scan's backward) and eval, fp32 and bf16/fp16 autocast, through
        :mod:`quadmamba_mm.analysis.triton_launches` (needs ``quadmamba_mm``).
    benchmark: what ``python -m quadmamba_kernels.benchmark --quadmamba-s`` launches.
    tests: the GPU tests (``tests/test_fused_scan.py``, ``test_selective_scan.py``,
        ``test_scan_in_place.py``) run with Triton's interpreter while their launches are
        recorded (needs the repository's ``tests/`` folder; takes a few minutes).

Exits 1 if any specialisation fails to compile or spills, 2 on bad arguments.
``--subset`` keeps the backbone at QuadMamba-Li, 224, only (the CI check: every arch at
224 launches the same tiles, dtypes and stage kinds).
"""
import argparse
import contextlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

DEFAULT_TARGETS = (80, 86, 89, 90, 100, 120)
# Per compute capability: registers per SM, most warps and programs (thread blocks) per SM,
# shared memory per SM usable by programs (bytes), from NVIDIA's CUDA C++ Programming Guide
# (compute capability table).
SM_LIMITS = {
    80: dict(regs=65536, warps=64, blocks=32, shared=164 * 1024),
    86: dict(regs=65536, warps=48, blocks=16, shared=100 * 1024),
    89: dict(regs=65536, warps=48, blocks=24, shared=100 * 1024),
    90: dict(regs=65536, warps=64, blocks=32, shared=228 * 1024),
    100: dict(regs=65536, warps=64, blocks=32, shared=228 * 1024),
    120: dict(regs=65536, warps=48, blocks=32, shared=100 * 1024),
}
ENV_LOG = 'QM_TRITON_LAUNCH_LOG'  # tests: append each recorded launch to this JSON-lines file
GPU_TESTS = ('tests/test_fused_scan.py', 'tests/test_selective_scan.py',
             'tests/test_scan_in_place.py')


@dataclass(frozen=True)
class Pointer:
    """A tensor argument as Triton specialises it: element type and address alignment."""
    dtype: str
    address: int  # the byte offset in its allocation (allocations are 256-byte aligned)

    def data_ptr(self) -> int:
        return 256 + self.address

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class Launch:
    """One recorded kernel launch: enough to specialise and compile it again."""
    kernel: str
    args: Tuple[Any, ...]
    kwargs: Tuple[Tuple[str, Any], ...]
    grid: Tuple[int, ...] = ()
    origin: str = ''

    def key(self) -> Tuple:
        """Launches with equal keys compile to the same binary (grid and origin aside)."""
        args = tuple(_int_class(a) if isinstance(a, int) and not isinstance(a, bool) else a
                     for a in self.args)
        return self.kernel, args, self.kwargs


def _int_class(value: int) -> Tuple[str, ...]:
    """How Triton specialises an integer argument: 1, a multiple of 16, or neither; 32 or
    64 bits."""
    bits = 'i32' if -2**31 <= value < 2**31 else 'i64'
    return ('one', ) if value == 1 else (bits, 'div16' if value % 16 == 0 else '')


def _argument(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Pointer(str(value.dtype).replace('torch.', ''),
                       value.storage_offset() * value.element_size())
    if isinstance(value, torch.dtype):
        return str(value)
    return value


def launch_of(kernel, grid, args, kwargs, origin: str = '') -> Launch:
    fn = getattr(kernel, 'fn', kernel)  # a JITFunction or the interpreter's
    name = fn.__name__
    if fn.__module__ != 'quadmamba_kernels.triton_scan':
        name = f'{fn.__module__}:{name}'
    return Launch(name, tuple(_argument(a) for a in args),
                  tuple(sorted((k, _argument(v)) for k, v in kwargs.items())),
                  tuple(int(g) for g in grid), origin)


@contextlib.contextmanager
def record_launches(origin: Callable[[], str] = lambda: '') -> Iterator[List[Launch]]:
    """Records every Triton scan launch made inside (the launches still run)."""
    from . import triton_scan
    launches: List[Launch] = []

    def observe(kernel, grid, args, kwargs):
        launches.append(launch_of(kernel, grid, args, kwargs, origin()))

    triton_scan.LAUNCH_OBSERVERS.append(observe)
    try:
        yield launches
    finally:
        triton_scan.LAUNCH_OBSERVERS.remove(observe)


def launch_to_json(launch: Launch) -> dict:
    def enc(v):
        return {'pointer': [v.dtype, v.address]} if isinstance(v, Pointer) else v

    return dict(kernel=launch.kernel, args=[enc(a) for a in launch.args],
                kwargs=[[k, enc(v)] for k, v in launch.kwargs], grid=list(launch.grid),
                origin=launch.origin)


def launch_from_json(obj: dict) -> Launch:
    def dec(v):
        return Pointer(*v['pointer']) if isinstance(v, dict) and 'pointer' in v else v

    return Launch(obj['kernel'], tuple(dec(a) for a in obj['args']),
                  tuple((k, dec(v)) for k, v in obj['kwargs']), tuple(obj['grid']),
                  obj['origin'])


# ---- compiling ----------------------------------------------------------------------------


@dataclass
class Result:
    """One specialisation compiled for one target."""
    kernel: str
    target: int
    specialisation: str
    origins: List[str] = field(default_factory=list)
    ok: bool = False
    error: str = ''
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    shared: int = 0
    warps: int = 0
    stages: int = 0
    blocks_per_sm: int = 0
    warps_per_sm: int = 0
    occupancy: float = 0.0
    seconds: float = 0.0


def occupancy(capability: int, registers: int, warps: int, shared: int) -> Tuple[int, int]:
    """``(programs per SM, warps per SM)`` the limits of registers, warps, programs and shared
    memory allow (registers are allocated per warp in units of 256)."""
    limits = SM_LIMITS.get(capability, SM_LIMITS[90])
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (limits['regs'] // per_warp) // warps
    by_warps = limits['warps'] // warps
    by_shared = limits['shared'] // shared if shared else limits['blocks']
    blocks = min(by_regs, by_warps, limits['blocks'], by_shared)
    return blocks, blocks * warps


_PTXAS = re.compile(r'(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads'
                    r'[\s\S]*?Used (\d+) registers')


def _bound_kernel(name: str):
    """The JITFunction of a launch: a name in :mod:`.triton_scan`, or ``module:name``."""
    import importlib
    module, _, name = name.rpartition(':')
    kernel = getattr(importlib.import_module(module or f'{__package__}.triton_scan'), name)
    if not hasattr(kernel, 'params'):
        raise RuntimeError('the compile check needs the Triton compiler: unset TRITON_INTERPRET')
    return kernel


def specialise(launch: Launch, capability: int):
    """``(ASTSource, options)`` of a launch for a CUDA target, by Triton's own argument
    binder (the same rules as a launch on that GPU)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = _bound_kernel(launch.kernel)
    target = GPUTarget('cuda', capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    args = [_BinderPointer(a) if isinstance(a, Pointer) else a for a in launch.args]
    kwargs = dict(launch.kwargs)
    from .triton_scan import launch_options  # what the launch code adds on such a GPU
    kwargs.update(launch_options(divmod(capability, 10)))
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec,
                                                              options)
    return ASTSource(kernel, signature, constexprs, attrs), options, target


class _BinderPointer:
    """A :class:`Pointer` as Triton's binder reads a tensor: ``dtype`` and ``data_ptr()``."""

    def __init__(self, pointer: Pointer) -> None:
        self.dtype = pointer.torch_dtype
        self._address = pointer.data_ptr()

    def data_ptr(self) -> int:
        return self._address


def describe(launch: Launch) -> str:
    """The compile-relevant parts of a launch, in one line: flags, tile, warps, the dtype of
    u (the first argument) and the strides specialised to 1 (read as contiguous)."""
    kw = dict(launch.kwargs)
    dtype = {'float32': 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16'}.get(
        launch.args[0].dtype, launch.args[0].dtype)
    flags = ''.join(f for f, k in (('o', 'ORDERED'), ('i', 'HAS_INDEX')) if kw.get(k))
    return (f"N={kw.get('N')} {kw.get('BLOCK_D')}x{kw.get('BLOCK_L')} w{kw.get('num_warps', 4)} "
            f"{dtype} {flags or '-'}")


def compile_one(launch: Launch, capability: int) -> Result:
    """Compile one specialisation with a private cache (so that ptxas runs and reports)."""
    import triton
    from triton import knobs

    result = Result(launch.kernel, capability, describe(launch), [launch.origin])
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with tempfile.TemporaryDirectory() as cache:
            os.environ['TRITON_CACHE_DIR'] = cache
            knobs.cache.dir = cache
            knobs.nvidia.dump_ptxas_log = True
            src, options, target = specialise(launch, capability)
            with contextlib.redirect_stdout(log):
                compiled = triton.compile(src, target=target, options=options.__dict__)
        match = _PTXAS.search(log.getvalue())
        if match is None:
            raise RuntimeError(f'no ptxas report in: {log.getvalue()[-500:]!r}')
        result.stack, result.spill_stores, result.spill_loads, result.registers = map(
            int, match.groups())
        result.shared = int(compiled.metadata.shared)
        result.warps = int(compiled.metadata.num_warps)
        result.stages = int(compiled.metadata.num_stages)
        result.blocks_per_sm, result.warps_per_sm = occupancy(capability, result.registers,
                                                              result.warps, result.shared)
        limit = SM_LIMITS.get(capability, SM_LIMITS[90])['warps']
        result.occupancy = result.warps_per_sm / limit
        result.ok = True
    except Exception as error:  # the compiler's own message is the finding
        result.error = f'{type(error).__name__}: {error}'.strip()[:2000]
    result.seconds = time.perf_counter() - start
    return result


def _compile_job(job: Tuple[dict, int]) -> Result:
    launch, capability = job
    return compile_one(launch_from_json(launch), capability)


def compile_all(launches: Sequence[Launch], targets: Sequence[int], jobs: int) -> List[Result]:
    """Each distinct specialisation of ``launches`` compiled for each target."""
    unique: Dict[Tuple, Launch] = {}
    origins: Dict[Tuple, List[str]] = {}
    for launch in launches:
        key = launch.key()
        unique.setdefault(key, launch)
        origins.setdefault(key, [])
        if launch.origin not in origins[key]:
            origins[key].append(launch.origin)
    work = [(launch_to_json(unique[key]), target) for key in unique for target in targets]
    if jobs > 1:
        # spawn: a forked child would inherit torch's threads and Triton's state.
        import multiprocessing
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
            results = list(pool.map(_compile_job, work))
    else:
        results = [_compile_job(job) for job in work]
    keys = [key for key in unique for _ in targets]
    for key, result in zip(keys, results):
        result.origins = origins[key]
    return results


# ---- launch sources -------------------------------------------------------------------------


def benchmark_launches() -> List[Launch]:
    """What the scan benchmark's QuadMamba-S shapes launch: fp32 and bf16 inputs, scan order
    and map order, forward and backward (on fake CUDA tensors)."""
    from . import ScanOrders, selective_scan
    from .benchmark import QUADMAMBA_S, make_inputs, map_orders
    from .fake_cuda import backward as fake_backward, fake_cuda

    label = ['']
    # The permutation check reads the orders: made for real, then faked.
    checked = {shape: ScanOrders(map_orders(shape[1], shape[4], 'cpu')) for shape in QUADMAMBA_S}
    with record_launches(lambda: label[0]) as launches, fake_cuda() as mode:
        for shape in QUADMAMBA_S:
            for dtype in (torch.float32, torch.bfloat16):
                for ordered in (False, True):
                    label[0] = f'benchmark {shape} {dtype} {"map" if ordered else "scan"} order'
                    inputs = make_inputs(*shape, device='cuda', dtype=dtype, ordered=ordered)
                    for t in inputs.values():
                        t.requires_grad_()
                    orders = None
                    if ordered:
                        orders = ScanOrders.from_checked(
                            *(mode.from_tensor(t).cuda() for t in (checked[shape].orders,
                                                                   checked[shape].inverses)))
                    y = selective_scan(**inputs, delta_softplus=True, orders=orders,
                                       backend='triton', output_fp32=True)
                    fake_backward(y.sum())
    return launches


def test_launches(root: Path, pytest_args: Sequence[str] = ()) -> List[Launch]:
    """The GPU tests' launches, recorded while they run on the CPU in Triton's interpreter
    (the same host code decides the launches)."""
    missing = [t for t in GPU_TESTS if not (root / t).is_file()]
    if missing:
        raise FileNotFoundError(f'the tests source needs the repository tests {missing} '
                                f'under {root}')
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / 'launches.jsonl'
        env = dict(os.environ, TRITON_INTERPRET='1', CUDA_VISIBLE_DEVICES='', **{ENV_LOG: str(log)})
        cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-k', 'triton',
               *pytest_args, *GPU_TESTS]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if done.returncode not in (0, 5):  # 5: nothing selected
            raise RuntimeError(f'the GPU tests failed while recording their launches:\n'
                               f'{done.stdout[-3000:]}{done.stderr[-2000:]}')
        if not log.is_file():
            return []
        return [launch_from_json(json.loads(line)) for line in log.read_text().splitlines()]


def append_to_log(path: str) -> Callable[[], None]:
    """Start appending every launch to the JSON-lines file ``path`` (the tests source's
    recorder, installed by the test suite's conftest when :data:`ENV_LOG` is set)."""
    from . import triton_scan

    def observe(kernel, grid, args, kwargs):
        with open(path, 'a') as f:
            f.write(json.dumps(launch_to_json(launch_of(kernel, grid, args, kwargs,
                                                        'gpu tests'))) + '\n')

    triton_scan.LAUNCH_OBSERVERS.append(observe)
    return lambda: triton_scan.LAUNCH_OBSERVERS.remove(observe)


def collect(sources: Iterable[str], subset: bool, root: Path) -> List[Launch]:
    launches: List[Launch] = []
    for source in sources:
        if source == 'backbone':
            try:
                from quadmamba_mm.analysis.triton_launches import backbone_launches
            except ImportError as error:
                raise SystemExit(f'compile_check: the backbone source needs quadmamba_mm '
                                 f'({error})') from None
            launches += backbone_launches(subset=subset)
        elif source == 'benchmark':
            launches += benchmark_launches()
        elif source == 'tests':
            launches += test_launches(root)
    return launches


# ---- report -------------------------------------------------------------------------------


def available_targets() -> List[int]:
    """The default targets the installed Triton can compile for."""
    from triton.backends.nvidia.compiler import get_ptxas
    found = [t for t in DEFAULT_TARGETS if t < 100]
    for capability in (100, 120):
        try:
            get_ptxas(capability)
            found.append(capability)
        except Exception:  # this Triton has no ptxas for that architecture
            pass
    return found


def table(results: Sequence[Result]) -> str:
    head = (f"{'kernel':<17} {'sm':>3} {'specialisation':<28} {'status':<6} {'regs':>4} "
            f"{'spill':>5} {'stack':>5} {'smem':>6} {'warps':>5} {'occ':>5}")
    lines = [head, '-' * len(head)]
    for r in results:
        status = 'ok' if r.ok else 'FAIL'
        if r.ok and r.spill_stores:
            status = 'SPILL'
        lines.append(f'{r.kernel:<17} {r.target:>3} {r.specialisation:<28} {status:<6} '
                     f'{r.registers:>4} {r.spill_stores:>5} {r.stack:>5} {r.shared:>6} '
                     f'{r.warps:>5} {r.occupancy:>5.0%}')
        if not r.ok:
            lines.append('    ' + r.error.replace('\n', '\n    ')[:1500])
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--targets', type=int, nargs='+', help='compute capabilities, e.g. '
                        '80 86 89 90 (default: those and 100/120 where this Triton has them)')
    parser.add_argument('--sources', nargs='*', default=['backbone', 'benchmark'],
                        choices=['backbone', 'benchmark', 'tests'])
    parser.add_argument('--subset', action='store_true',
                        help='the backbone as QuadMamba-Li at 224 only (the CI check)')
    parser.add_argument('--jobs', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--json', help='write every result to this file')
    parser.add_argument('--root', default='.', help='repository root (tests source)')
    parser.add_argument('--launch-log', nargs='+', default=[],
                        help='also compile the launches recorded in these JSON-lines files '
                        f'(written by a test run with {ENV_LOG}=FILE)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import triton
    if os.environ.get('TRITON_INTERPRET') == '1':
        print('compile_check: TRITON_INTERPRET=1 is set: the interpreter compiles nothing; '
              'unset it', file=sys.stderr)
        return 2
    targets = args.targets or available_targets()
    unknown = [t for t in targets if t not in SM_LIMITS]
    if unknown:
        print(f'compile_check: unknown targets {unknown}; known: {sorted(SM_LIMITS)}',
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    launches = collect(args.sources, args.subset, Path(args.root).resolve())
    for log in args.launch_log:
        launches += [launch_from_json(json.loads(line))
                     for line in Path(log).read_text().splitlines() if line.strip()]
    recorded = time.perf_counter() - start
    if not launches:  # a check that compiled nothing must not pass
        print(f'compile_check: no Triton launch recorded from {args.sources + args.launch_log}',
              file=sys.stderr)
        return 1
    results = compile_all(launches, targets, max(1, args.jobs))
    failed = [r for r in results if not r.ok]
    spilled = [r for r in results if r.ok and r.spill_stores]
    print(f'triton {triton.__version__}, torch {torch.__version__}, {platform.machine()}, '
          f'targets sm_{", sm_".join(map(str, targets))}; {len(launches)} launches recorded '
          f'from {", ".join(args.sources + args.launch_log) or "nothing"} in {recorded:.0f} s')
    print(table(results), flush=True)
    n_spec = len(results) // max(1, len(targets))
    print(f'{n_spec} specialisations x {len(targets)} targets: {len(results) - len(failed)} '
          f'compiled, {len(failed)} failed, {len(spilled)} spill; '
          f'{time.perf_counter() - start:.0f} s in all')
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            triton=triton.__version__, torch=torch.__version__, targets=targets,
            sources=args.sources, subset=args.subset, launches=len(launches),
            results=[asdict(r) for r in results]), indent=1))
    return 1 if failed or spilled else 0


if __name__ == '__main__':
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Once, with six targets on a loaded machine, the interpreter hung at exit after the
    # results were written (in the process pool's exit handlers); nothing is left to clean up.
    os._exit(code)
