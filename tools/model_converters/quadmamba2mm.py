"""Convert an upstream QuadMamba ImageNet checkpoint to this project's mmpretrain format.

    python tools/model_converters/quadmamba2mm.py SRC DST [--ema]

SRC: a checkpoint of the released code (a dict whose 'model' entry is the state dict, or a
bare state dict), e.g. the released QuadMamba-v3 ImageNet weights (our arch ``s``; the
released code names its checkpoints ``ckpt_epoch_<N>.pth``). It is read with a restricted
unpickler: its non-tensor objects (optimizer, config) are replaced by inert placeholders and
no code from it runs. DST gets
``{'state_dict': {'backbone.*', 'head.fc.*'}, 'meta': ...}``, which loads strictly into
``configs/quadmamba/quadmamba-{arch}_8xb128_in1k.py`` and, through
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``, into detection and
segmentation backbones. Unknown, missing or mis-shaped keys fail the conversion, by name.

The architecture is read from the tensor shapes and block counts. When it is not one of the
presets li/t/s/b, the tool prints the ``backbone=dict(arch=dict(...), ...)`` settings a config
needs and stores them in DST's meta (``meta['backbone']``).

The converted weights were trained with the released scan layout: use them with
``scan_layout='upstream'`` to get the numbers the upstream code gives.
"""
import argparse
import sys
from pathlib import Path

import torch

from quadmamba_mm.checkpoints.upstream import (ConversionError, arch_name,
                                                    backbone_config_text,
                                                    convert_upstream_state_dict,
                                                    load_untrusted_checkpoint, upstream_state_dict)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='upstream checkpoint')
    parser.add_argument('dst', help='where to write the mmpretrain checkpoint')
    parser.add_argument('--ema', action='store_true', help="convert 'model_ema' instead of 'model'")
    args = parser.parse_args(argv)
    if not Path(args.src).is_file():
        print(f'error: no checkpoint at {args.src}', file=sys.stderr)
        return 1
    checkpoint, replaced = load_untrusted_checkpoint(args.src)
    if replaced:
        print(f'ignored non-tensor objects of the checkpoint: {", ".join(replaced)}')
    try:
        state_dict, kwargs = convert_upstream_state_dict(upstream_state_dict(checkpoint, args.ema))
    except ConversionError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    name = arch_name(kwargs)
    backbone = dict(kwargs, scan_layout='upstream')
    meta = dict(converted_from='VISION-SJTU/QuadMamba', source=Path(args.src).name,
                arch=name or kwargs['arch'], d_state=kwargs['d_state'], backbone=backbone,
                scan_layout='upstream')
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': state_dict, 'meta': meta}, args.dst)
    if name:
        print(f'wrote {len(state_dict)} tensors for QuadMamba arch {name} to {args.dst}')
    else:
        print(f'wrote {len(state_dict)} tensors to {args.dst}; their architecture is none of '
              'the presets li/t/s/b. Use it in a config (also stored in the checkpoint\'s '
              "meta['backbone']):\n"
              f'    model = dict({backbone_config_text(kwargs)})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
