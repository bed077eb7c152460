"""Speed and peak memory of models side by side, at one input size or a sweep of sizes.

    python tools/analysis_tools/benchmark.py MODEL [MODEL ...] [--device cpu|cuda]
        [--sizes 224 512 1024 | --shape H [W]] [--batch-size N [N ...]]
        [--modes infer train | --train] [--repeat 7] [--warmup 2] [--amp bf16|fp16]
        [--channels-last] [--tf32] [--threads N] [--memory auto|none] [--out DIR]
    python tools/analysis_tools/benchmark.py --plot DIR/benchmark.json   # redraw the figure

MODEL is a config file or a toolbox config such as
``mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py``, or, without the OpenMMLab
toolboxes (torch and mmengine only), ``quadmamba:ARCH`` (the backbone with a pooled linear
1000-class head) or ``timm:NAME`` (a timm model); ``compiled:MODEL`` is that model under
``torch.compile(fullgraph=True)``, compiled in the warm-up rounds (``--warmup`` of at least
1; ``--memory none`` keeps it out of the per-model memory processes). Models built for one
input size are
rebuilt for each size, and the output says what was done: timm Swin/ViT get ``img_size=``
(timm's Swin pads stage maps to multiples of its window), a config's ``backbone.img_size``
is set (mmpretrain's Swin pads maps to multiples of its window as well).

``--sizes`` runs every model at every (square) size; ``--batch-size`` takes one value or one
per size. ``--modes`` picks the inference forward (``infer``), the training step
(``train``: zero_grad + forward + backward of the outputs' mean, no optimizer step) or both;
``--train`` is short for ``--modes train``. Within one size and mode the models run
interleaved, round by round, on the same input; times are medians.

Peak memory per (model, size, mode): on CUDA from ``torch.cuda.max_memory_allocated`` over one
steady-state step; on the CPU from the process' peak RSS over the first step of a fresh
process per measurement (forked from a server that imported torch once; ``--memory none``
saves that time). Both are the step's peak above what was in memory before it, plus the
model's weights and the input.

Every table starts with a line naming the CPU, its vector ISA, torch's thread count and
version, and on CUDA the GPU, the TF32 setting (``--tf32``; off otherwise), the AMP dtype and
channels_last (``--channels-last``). ``--out DIR`` writes ``benchmark.json``,
``benchmark.md`` and ``benchmark.png`` (matplotlib; skipped with a message where it is not
installed, ``--plot`` draws it later).
"""
import argparse
import json
import multiprocessing
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_lib as lib  # noqa: E402  (this folder is not a package)

MIB = 2**20


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('configs', nargs='*', metavar='MODEL')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--sizes', type=int, nargs='+', default=None,
                        help='square input sizes to sweep, e.g. 224 512 1024')
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='one input size H [W] (default 224)')
    parser.add_argument('--batch-size', type=int, nargs='+', default=[1],
                        help='one batch size, or one per size')
    parser.add_argument('--modes', nargs='+', choices=list(lib.MODES), default=None,
                        help='infer (default) and/or train')
    parser.add_argument('--train', action='store_true', help='same as --modes train')
    parser.add_argument('--repeat', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--amp', choices=['bf16', 'fp16'], default=None)
    parser.add_argument('--channels-last', action='store_true',
                        help='model and input in channels_last memory format')
    parser.add_argument('--tf32', action='store_true',
                        help='CUDA: TF32 for fp32 matmuls and convolutions (off otherwise)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--memory', choices=['auto', 'none'], default='auto',
                        help='measure peak memory (auto) or not (none)')
    parser.add_argument('--out', type=Path, default=None,
                        help='write benchmark.json, benchmark.md and benchmark.png here')
    parser.add_argument('--profile', action='store_true',
                        help='CPU: after timing, profile --repeat more steps of each model and '
                        'split their time into dense layers, selective scan and the rest')
    parser.add_argument('--plot', type=Path, default=None, metavar='JSON',
                        help='only draw benchmark.png from a benchmark.json')
    args = parser.parse_args(argv)

    if args.plot:
        return args
    if not args.configs:
        parser.error('expected at least one MODEL (or --plot JSON)')
    if len(set(args.configs)) != len(args.configs):
        parser.error(f'each MODEL once, got {args.configs}')
    if args.sizes and args.shape:
        parser.error('give --sizes (a sweep of square sizes) or --shape H [W], not both')
    if args.shape and len(args.shape) > 2:
        parser.error(f'--shape takes H or H W, got {len(args.shape)} values')
    if args.train and args.modes:
        parser.error('--train is short for --modes train; give one of them')
    args.modes = ['train'] if args.train else (args.modes or ['infer'])
    if args.sizes:
        args.size_list = [(s, s) for s in args.sizes]
    else:
        shape = args.shape or [224]
        args.size_list = [(shape[0], shape[-1])]
    if len(args.batch_size) not in (1, len(args.size_list)):
        parser.error(f'--batch-size takes one value or one per size ({len(args.size_list)}), '
                     f'got {len(args.batch_size)}')
    args.batch_list = args.batch_size * len(args.size_list) if len(args.batch_size) == 1 \
        else args.batch_size
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda, but torch sees no CUDA device')
    if args.tf32 and device.type != 'cuda':
        parser.error('--tf32 applies to CUDA runs only')
    if args.profile and device.type != 'cpu':
        parser.error('--profile splits CPU time; it applies to --device cpu only')
    return args


# ---- the sweep -----------------------------------------------------------------------------
def size_key(size: Tuple[int, int]) -> str:
    return f'{size[0]}x{size[1]}'


def cpu_memory_pool(specs: List[str]) -> ProcessPoolExecutor:
    """One fresh worker per measurement, forked from a server that imported torch once."""
    ctx = multiprocessing.get_context('forkserver')
    preload = ['benchmark_lib', 'quadmamba_mm.models.classifier']
    for spec in specs:
        preload += [m for m in lib.toolbox_modules(spec) if m not in preload]
    ctx.set_forkserver_preload(preload)
    return ProcessPoolExecutor(max_workers=1, mp_context=ctx)


def measure_cpu_memory(args, spec: str, size, batch: int, mode: str) -> Dict[str, Any]:
    # A new pool each time: a worker that ran one measurement has memory the next would reuse.
    with cpu_memory_pool(args.configs) as pool:
        return pool.submit(lib.cpu_step_memory, spec, size, batch, mode, args.amp,
                           args.channels_last, torch.get_num_threads()).result()


def new_row(spec: str, size, batch: int, mode: str) -> Dict[str, Any]:
    return dict(model=spec, size=list(size), batch=batch, mode=mode, times_ms=[],
                ms_per_batch=None, ms_per_image=None, images_per_s=None, vs_first=None,
                step_mib=None, weights_mib=None, input_mib=None, peak_mib=None, split_ms=None,
                error=None)


def finish_row(row: Dict[str, Any], first: Optional[Dict[str, Any]]) -> None:
    if row['error'] or not row['times_ms']:
        return
    median = statistics.median(row['times_ms'])
    row.update(ms_per_batch=median, ms_per_image=median / row['batch'],
               images_per_s=row['batch'] / median * 1e3)
    if first is not None and first['ms_per_batch']:
        row['vs_first'] = median / first['ms_per_batch']
    if row['step_mib'] is not None:
        row['peak_mib'] = row['step_mib'] + row['weights_mib'] + row['input_mib']


def run_block(args, device, models: Dict[str, torch.nn.Module], size, batch: int, mode: str,
              amp) -> List[Dict[str, Any]]:
    """All models at one size and mode, interleaved round by round."""
    inputs = lib.make_inputs(batch, size, device, args.channels_last)
    rows = {spec: new_row(spec, size, batch, mode) for spec in models}
    steps = {}
    for spec, model in models.items():
        models[spec] = lib.prepare(model, device, mode, args.channels_last)
        steps[spec] = lib.make_step(models[spec], inputs, mode, amp)
        rows[spec].update(weights_mib=lib.state_bytes(model) / MIB,
                          input_mib=inputs.numel() * inputs.element_size() / MIB)
    cuda_memory = device.type == 'cuda' and args.memory == 'auto'
    memory_round = max(args.warmup - 1, 0)  # the last warm-up step, or one more before timing
    for round_index in range(args.warmup + args.repeat):
        for spec, step in steps.items():
            row = rows[spec]
            if row['error']:
                continue
            try:
                if cuda_memory and round_index == memory_round and row['step_mib'] is None:
                    row['step_mib'] = lib.cuda_step_memory(step, models[spec], device) / MIB
                    if round_index < args.warmup:
                        continue
                elapsed = lib.timed(step, device)
            except torch.cuda.OutOfMemoryError:
                row.update(error='out of memory', step_mib=None)
                models[spec].zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                continue
            if round_index >= args.warmup:
                row['times_ms'].append(elapsed * 1e3)
    if args.profile:
        for spec, step in steps.items():
            if not rows[spec]['error']:
                rows[spec]['split_ms'] = lib.time_split(step, args.repeat)
    for model in models.values():
        model.zero_grad(set_to_none=True)
    if device.type == 'cpu' and args.memory == 'auto':
        for spec, row in rows.items():
            found = measure_cpu_memory(args, spec, size, batch, mode)
            row.update(step_mib=found['step_bytes'] / MIB, memory_method=found['method'])
    first = rows[args.configs[0]]
    for row in [first] + [r for s, r in rows.items() if s != args.configs[0]]:
        finish_row(row, first)
    return list(rows.values())


def run(args) -> Dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == 'cuda':
        lib.set_tf32(args.tf32)
    amp = lib.AMP_DTYPES[args.amp]
    info = lib.machine_info(device, args.amp, args.channels_last)
    result = dict(machine=info, header=lib.header_line(info), memory_method=None,
                  settings=dict(models=args.configs, sizes=[list(s) for s in args.size_list],
                                batch_sizes=args.batch_list, modes=args.modes,
                                warmup=args.warmup, repeat=args.repeat),
                  notes={spec: {} for spec in args.configs}, rows=[])
    if args.memory == 'auto':
        result['memory_method'] = lib.CUDA_MEMORY if device.type == 'cuda' else lib.CPU_MEMORY
    rebuilt = {spec: lib.size_dependent(spec) for spec in args.configs}
    cache: Dict[str, Tuple[Optional[tuple], torch.nn.Module]] = {}
    for size, batch in zip(args.size_list, args.batch_list):
        models = {}
        for spec in args.configs:
            if spec not in cache or (rebuilt[spec] and cache[spec][0] != size):
                cache.pop(spec, None)  # free the model built for the last size first
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
                model, note = lib.build_model(spec, size)
                cache[spec] = (size if rebuilt[spec] else None, model)
                if note:
                    result['notes'][spec][size_key(size)] = note
            models[spec] = cache[spec][1]
        for mode in args.modes:
            rows = run_block(args, device, models, size, batch, mode, amp)
            result['rows'].extend(rows)
            for row in rows:
                result['memory_method'] = row.pop('memory_method', result['memory_method'])
            print(f'done: {size_key(size)}, batch {batch}, {lib.MODES[mode]}', file=sys.stderr,
                  flush=True)
            if args.out:  # after every block: a run cut short keeps what it measured
                write_outputs(result, args.out, figure=False)
    return result


# ---- reports -------------------------------------------------------------------------------
def fmt(value: Optional[float], digits: int = 1) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def markdown(result: Dict[str, Any]) -> str:
    """The results table: machine line first, then the rows, then what the columns mean."""
    settings = result['settings']
    lines = [result['header'], '',
             '| model | size | batch | mode | ms/batch | ms/img | img/s | vs first | peak MiB |',
             '|---|---|---:|---|---:|---:|---:|---:|---:|']
    for r in result['rows']:
        ratio = '-' if r['vs_first'] is None else f"{r['vs_first']:.2f}x"
        ms = r['error'] or fmt(r['ms_per_batch'])
        lines.append(f"| {r['model']} | {size_key(r['size'])} | {r['batch']} | "
                     f"{lib.MODES[r['mode']]} | {ms} | {fmt(r['ms_per_image'], 2)} | "
                     f"{fmt(r['images_per_s'])} | {ratio} | {fmt(r['peak_mib'], 0)} |")
    lines += ['', f"Median of {settings['repeat']} timed rounds after {settings['warmup']} "
              'warm-up rounds; the models run interleaved, round by round, in one process. '
              '"vs first": time per batch against the first model at the same size and mode. '
              'train step: zero_grad + forward + backward of the outputs\' mean (no optimizer '
              'step).']
    lines.append('peak MiB: ' + (result['memory_method'] or 'not measured (--memory none)') +
                 '.')
    for spec, notes in result['notes'].items():
        for size, note in notes.items():
            lines.append(f'- {spec} at {size}: {note}')
    split_rows = [r for r in result['rows'] if r.get('split_ms')]
    if split_rows:
        lines += ['', '| model | size | batch | mode | dense ms | scan ms | rest ms | '
                  'rest removed |', '|---|---|---:|---|---:|---:|---:|---:|']
        for r in split_rows:
            split = r['split_ms']
            fixed = split['dense'] + split['scan']
            lines.append(f"| {r['model']} | {size_key(r['size'])} | {r['batch']} | "
                         f"{lib.MODES[r['mode']]} | {fmt(split['dense'])} | "
                         f"{fmt(split['scan'])} | {fmt(split['rest'])} | "
                         f"{(fixed + split['rest']) / fixed:.2f}x |")
        lines += ['', 'Time split (--profile): self CPU time per step from the torch profiler '
                  f"over {settings['repeat']} more steps. dense: {', '.join(lib.DENSE_OPS)}; "
                  'scan: the quadmamba ops; rest: everything else (elementwise, norms, copies, '
                  'framework overhead; inflated by the profiler). "rest removed": how much '
                  'faster a step would be if the rest took no time, the most a compiler that '
                  'leaves matmuls, convolutions and the scan alone can gain.']
    return '\n'.join(lines) + '\n'


def draw_figure(result: Dict[str, Any], path: Path) -> bool:
    """ms per image against size (one panel per mode) and peak memory; False without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print(f'matplotlib is not installed: {path.name} not drawn (redraw later with '
              f'--plot {path.with_suffix(".json")})', file=sys.stderr)
        return False
    rows = [r for r in result['rows'] if r['ms_per_image'] is not None]
    modes = [m for m in lib.MODES if any(r['mode'] == m for r in rows)]
    memory = any(r['peak_mib'] is not None for r in rows)
    panels = len(modes) + memory
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5.5 * max(panels, 1), 4.5),
                             squeeze=False)
    axes = list(axes[0])
    models = list(dict.fromkeys(r['model'] for r in result['rows']))
    cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
    color = {model: cycle[i % len(cycle)] for i, model in enumerate(models)}
    for ax, mode in zip(axes, modes):
        for model in models:
            points = [(r['size'][0], r['ms_per_image']) for r in rows
                      if r['model'] == model and r['mode'] == mode]
            if points:
                ax.plot(*zip(*points), marker='o', color=color[model], label=model)
        ax.set(title=f'{lib.MODES[mode]}: ms per image', xlabel='input size (px)',
               ylabel='ms / image', yscale='log')
    if memory:
        ax = axes[-1]
        for model in models:
            for mode, style in (('infer', '-'), ('train', '--')):
                points = [(r['size'][0], r['peak_mib']) for r in rows
                          if r['model'] == model and r['mode'] == mode
                          and r['peak_mib'] is not None]
                if points:
                    ax.plot(*zip(*points), style, marker='o', color=color[model],
                            label=f'{model} ({lib.MODES[mode]})')
        ax.set(title='peak memory (solid: inference, dashed: train step)',
               xlabel='input size (px)', ylabel='MiB', yscale='log')
    sizes = sorted({r['size'][0] for r in rows})
    for ax in axes:
        if sizes:
            ax.set_xticks(sizes)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(result['header'], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_outputs(result: Dict[str, Any], out: Path, figure: bool = True) -> List[str]:
    """Writes the files; returns their names."""
    out.mkdir(parents=True, exist_ok=True)
    (out / 'benchmark.json').write_text(json.dumps(result, indent=1))
    (out / 'benchmark.md').write_text(markdown(result))
    names = ['benchmark.json', 'benchmark.md']
    if figure and draw_figure(result, out / 'benchmark.png'):
        names.append('benchmark.png')
    return names


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.plot:
        result = json.loads(args.plot.read_text())
        target = (args.out or args.plot.parent) / 'benchmark.png'
        if draw_figure(result, target):
            print(f'wrote {target}')
        return
    result = run(args)
    print(markdown(result))
    if args.out:
        print(f"wrote {', '.join(write_outputs(result, args.out))} in {args.out}")


if __name__ == '__main__':
    main()
