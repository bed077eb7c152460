"""Check that the environment holds the pinned OpenMMLab stack with mmcv's compiled ops.

Run ``python -m quadmamba_mm.runtime.env_check``: it exits non-zero with one line per
problem. The pins are read from this package's own metadata (``setup.cfg``), so they are
written in one place only.
"""
import argparse
import importlib.metadata as metadata
import sys
from typing import List

from packaging.requirements import Requirement

DIST_NAME = 'quadmamba-mm'
# Distributions that all install the same top-level ``cv2``: exactly one may be present.
CV2_PROVIDERS = ('opencv-python', 'opencv-python-headless', 'opencv-contrib-python',
                 'opencv-contrib-python-headless')


def pinned_requirements(extras=('mm', )) -> List[Requirement]:
    """The ``==`` requirements of this package, including those of ``extras``."""
    pins = []
    for line in metadata.requires(DIST_NAME) or []:
        req = Requirement(line)
        in_scope = req.marker is None or any(
            req.marker.evaluate({'extra': extra}) for extra in ('', ) + tuple(extras))
        if in_scope and any(spec.operator == '==' for spec in req.specifier):
            pins.append(req)
    return pins


def check_mmcv_ops(device: str) -> List[str]:
    """Run ``mmcv.ops`` nms and RoIAlign (what every Mask R-CNN config uses) on ``device``."""
    try:
        import torch
        from mmcv.ops import RoIAlign, nms
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]],
                             device=device)
        scores = torch.tensor([0.9, 0.8, 0.7], device=device)
        _, keep = nms(boxes, scores, iou_threshold=0.5)
        if keep.tolist() != [0, 2]:
            return [f'mmcv.ops.nms on {device} returned {keep.tolist()}, expected [0, 2]']
        feats = torch.arange(16., device=device).view(1, 1, 4, 4)
        rois = torch.tensor([[0., 0., 0., 4., 4.]], device=device)
        pooled = RoIAlign(output_size=2, spatial_scale=1.0, sampling_ratio=1, aligned=False)(
            feats, rois)
        if tuple(pooled.shape) != (1, 1, 2, 2) or not bool(torch.isfinite(pooled).all()):
            return [f'mmcv.ops.RoIAlign on {device} returned {pooled.tolist()}']
    except Exception as exc:  # any failure here means the compiled ops are unusable
        if device != 'cpu':
            return [f'mmcv.ops nms/RoIAlign do not run on {device}: {exc!r}. mmcv was most '
                    'likely built without its CUDA ops (no nvcc/CUDA toolkit at build time): '
                    'rebuild it with MMCV_WITH_OPS=1 FORCE_CUDA=1 on a machine with nvcc '
                    'matching torch.version.cuda']
        return [f'mmcv.ops (compiled ops: nms, RoIAlign) does not work: {exc!r}. '
                'Rebuild mmcv with MMCV_WITH_OPS=1 for this torch '
                '(bash tools/setup_env.sh does it).']
    return []


def scan_backends(device: str) -> List[str]:
    """One line per input dtype: the scan backend ``'auto'`` uses on ``device`` for it. On a
    GPU this compiles and runs one tiny Triton scan per dtype (forward and backward); where
    it fails, the line says why and that training falls back to the chunked PyTorch scan."""
    import warnings

    import torch

    from quadmamba_kernels import resolve_backend
    lines = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # said below, in one line per dtype
            backend = resolve_backend('auto', torch.device(device), dtype).name
        line = f'{device} {str(dtype).replace("torch.", "")} inputs: scan backend {backend!r}'
        if torch.device(device).type == 'cuda':
            from quadmamba_kernels.triton_probe import known_failure
            failure = known_failure(torch.device(device), dtype)
            line += (f' (the Triton scan failed: {failure.splitlines()[0][:200]})' if failure
                     else ' (a tiny Triton scan compiled and ran, forward and backward)')
        lines.append(line)
    return lines


def find_problems() -> List[str]:
    problems = []
    for req in pinned_requirements():
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f'{req.name} is not installed (pinned: {req.specifier})')
            continue
        if version not in req.specifier:
            problems.append(f'{req.name} {version} is installed, the pin is {req.specifier}')

    cv2_dists = []
    for name in CV2_PROVIDERS:
        try:
            metadata.version(name)
            cv2_dists.append(name)
        except metadata.PackageNotFoundError:
            pass
    if cv2_dists != ['opencv-python-headless']:
        problems.append('expected opencv-python-headless as the only cv2 provider, found: '
                        f'{cv2_dists or "none"}')

    problems += check_mmcv_ops('cpu')
    import torch
    if torch.cuda.is_available():
        problems += check_mmcv_ops('cuda')

    for module in ('mmdet', 'mmseg', 'mmpretrain', 'quadmamba_mm', 'quadmamba_kernels'):
        try:
            __import__(module)
        except Exception as exc:
            problems.append(f'import {module} failed: {exc!r}')
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quiet', action='store_true', help='print nothing on success')
    args = parser.parse_args(argv)
    problems = find_problems()
    for problem in problems:
        print(f'[env_check] ERROR: {problem}', file=sys.stderr)
    if not problems and not args.quiet:
        versions = ', '.join(f'{req.name} {metadata.version(req.name)}'
                             for req in pinned_requirements())
        import torch
        devices = 'cpu and cuda' if torch.cuda.is_available() else 'cpu'
        print(f'[env_check] OK: {versions}; mmcv ops run on {devices}; '
              'cv2 from opencv-python-headless')
        for device in ('cpu', 'cuda') if torch.cuda.is_available() else ('cpu', ):
            for line in scan_backends(device):
                print(f'[env_check] {line}')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
