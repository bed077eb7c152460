"""Upstream QuadMamba classification checkpoints -> mmpretrain checkpoints of this project.

The released code (VISION-SJTU/QuadMamba) saves ``{'model': state_dict, 'model_ema': ...,
'optimizer': ..., 'config': <yacs CfgNode>, ...}``. :func:`load_untrusted_checkpoint` reads
such a file without running any of its code; :func:`convert_upstream_state_dict` renames every
key (an unknown key is an error) and checks the result against the model it describes.
"""
import _compat_pickle
import math
import pickle
import re
import types
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

# Older upstream checkpoints, renamed as the upstream loader does before anything else.
_LEGACY_RENAMES = [
    (r'^patch_embed\.proj\.', 'patch_embed.0.'),
    (r'^patch_embed\.norm\.', 'patch_embed.2.'),
    (r'\.ln_1\.', '.norm.'),
    (r'\.self_attention\.', '.op.'),
    (r'^norm\.', 'classifier.norm.'),
    (r'^head\.', 'classifier.head.'),
]

_BLOCK = r'^layers\.(\d+)\.blocks\.(\d+)\.'
_OUR_BLOCK = r'backbone.stages.\1.blocks.\2.'
# Upstream key pattern -> ours. The first match wins; a key that matches none is an error.
KEY_RULES = [
    (r'^patch_embed\.0\.', 'backbone.patch_embed.conv1.'),
    (r'^patch_embed\.2\.', 'backbone.patch_embed.norm1.'),
    (r'^patch_embed\.5\.', 'backbone.patch_embed.conv2.'),
    (r'^patch_embed\.7\.', 'backbone.patch_embed.norm2.'),
    (r'^layers\.(\d+)\.downsample\.1\.', r'backbone.stages.\1.downsample.reduction.'),
    (r'^layers\.(\d+)\.downsample\.3\.', r'backbone.stages.\1.downsample.norm.'),
    # Predictor: in_conv = (LN, Linear, GELU), out_conv = (Linear, GELU, Linear, GELU,
    # Linear, LogSoftmax); ours is one Sequential (LN, Linear, GELU, Linear, GELU, ...).
    (_BLOCK + r'op\.score_predictor\.in_conv\.0\.', _OUR_BLOCK + 'op.predictor.layers.0.'),
    (_BLOCK + r'op\.score_predictor\.in_conv\.1\.', _OUR_BLOCK + 'op.predictor.layers.1.'),
    (_BLOCK + r'op\.score_predictor\.out_conv\.0\.', _OUR_BLOCK + 'op.predictor.layers.3.'),
    (_BLOCK + r'op\.score_predictor\.out_conv\.2\.', _OUR_BLOCK + 'op.predictor.layers.5.'),
    (_BLOCK + r'op\.score_predictor\.out_conv\.4\.', _OUR_BLOCK + 'op.predictor.layers.7.'),
    (_BLOCK + r'mlp\.fc1\.', _OUR_BLOCK + 'mlp.0.'),
    (_BLOCK + r'mlp\.fc2\.', _OUR_BLOCK + 'mlp.2.'),
    (_BLOCK + r'(norm|norm2)\.(weight|bias)$', _OUR_BLOCK + r'\3.\4'),
    (_BLOCK + r'op\.(x_proj_weight|dt_projs_weight|dt_projs_bias|A_logs|Ds)$',
     _OUR_BLOCK + r'op.\3'),
    (_BLOCK + r'op\.(out_norm|in_proj|conv2d|out_proj)\.', _OUR_BLOCK + r'op.\3.'),
    (r'^classifier\.norm\.', 'backbone.norm3.'),
    (r'^classifier\.head\.', 'head.fc.'),
]


class ConversionError(ValueError):
    """The checkpoint does not hold a complete upstream QuadMamba classifier."""


class _Inert(dict):
    """Stands in for every class or function of an untrusted pickle that torch does not
    allow-list: it accepts any construction, call, items or state and does nothing, so no
    code from the file runs. (A dict subclass, because pickled configs are dict subclasses.)"""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def _restricted_pickle_module(replaced: set) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose unpickler resolves only the globals of
    torch's own weights-only allow-list; every other global becomes :class:`_Inert`."""
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed = _get_allowed_globals()

    class RestrictedUnpickler(pickle.Unpickler):

        def find_class(self, module: str, name: str):
            if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 (Python 2) names
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            full_name = f'{module}.{name}'
            if full_name in allowed:
                return allowed[full_name]
            replaced.add(full_name)
            return _Inert

    restricted = types.ModuleType('quadmamba_restricted_pickle')
    restricted.Unpickler = RestrictedUnpickler
    restricted.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()
    return restricted


def load_untrusted_checkpoint(path: str) -> Tuple[dict, List[str]]:
    """Load a checkpoint of unknown origin: tensors and containers load as usual, every
    other object (an optimizer's classes, a yacs config, anything malicious) becomes an
    inert placeholder. Nothing but torch's allow-listed rebuild functions runs.

    Returns:
        The loaded object and the names of the globals that were replaced.
    """
    replaced = set()
    checkpoint = torch.load(path, map_location='cpu', weights_only=False,
                            pickle_module=_restricted_pickle_module(replaced))
    return checkpoint, sorted(replaced)


def upstream_state_dict(checkpoint: dict, use_ema: bool = False) -> Dict[str, Tensor]:
    """The model weights of an upstream checkpoint (``model`` / ``model_ema``, or bare)."""
    key = 'model_ema' if use_ema else 'model'
    if key in checkpoint:
        return checkpoint[key]
    if use_ema:
        raise ConversionError(f"no 'model_ema' in the checkpoint; its keys: {sorted(checkpoint)}")
    if all(isinstance(v, Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ConversionError("expected an upstream checkpoint with a 'model' entry or a bare state "
                          f'dict; found the keys {sorted(checkpoint)[:10]}')


def rename_key(key: str) -> str:
    for pattern, replacement in _LEGACY_RENAMES:
        key = re.sub(pattern, replacement, key)
    for pattern, replacement in KEY_RULES:
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key)
    raise KeyError(key)


# Our key pattern -> upstream, for the keys of a classifier (backbone with out_indices=(3, )
# plus head): the inverse of KEY_RULES, used to write weights in the released code's format.
_UPSTREAM_BLOCK = r'layers.\1.blocks.\2.'
INVERSE_KEY_RULES = [
    (r'^backbone\.patch_embed\.conv1\.', 'patch_embed.0.'),
    (r'^backbone\.patch_embed\.norm1\.', 'patch_embed.2.'),
    (r'^backbone\.patch_embed\.conv2\.', 'patch_embed.5.'),
    (r'^backbone\.patch_embed\.norm2\.', 'patch_embed.7.'),
    (r'^backbone\.stages\.(\d+)\.downsample\.reduction\.', r'layers.\1.downsample.1.'),
    (r'^backbone\.stages\.(\d+)\.downsample\.norm\.', r'layers.\1.downsample.3.'),
    *[(r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.op\.predictor\.layers\.' + ours + r'\.',
       _UPSTREAM_BLOCK + 'op.score_predictor.' + theirs + '.')
      for ours, theirs in (('0', 'in_conv.0'), ('1', 'in_conv.1'), ('3', 'out_conv.0'),
                           ('5', 'out_conv.2'), ('7', 'out_conv.4'))],
    (r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.0\.', _UPSTREAM_BLOCK + 'mlp.fc1.'),
    (r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.2\.', _UPSTREAM_BLOCK + 'mlp.fc2.'),
    (r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.(norm|norm2)\.(weight|bias)$',
     _UPSTREAM_BLOCK + r'\3.\4'),
    (r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.op\.'
     r'(x_proj_weight|dt_projs_weight|dt_projs_bias|A_logs|Ds)$', _UPSTREAM_BLOCK + r'op.\3'),
    (r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.op\.(out_norm|in_proj|conv2d|out_proj)\.',
     _UPSTREAM_BLOCK + r'op.\3.'),
    (r'^backbone\.norm3\.', 'classifier.norm.'),
    (r'^head\.fc\.', 'classifier.head.'),
]

# QuadMamba's defaults for the arguments :func:`infer_arch` reads besides ``arch``.
_DEFAULTS = dict(d_state=1, dt_rank='auto', mlp_ratio=4.0, quadtree_stages=(0, 1))


def to_upstream_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Our classifier's state dict (``backbone.*`` with ``norm3``, ``head.fc.*``) under the
    released code's key names: the inverse of :func:`convert_upstream_state_dict`."""
    upstream, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, replacement in INVERSE_KEY_RULES:
            if re.search(pattern, key):
                upstream[re.sub(pattern, replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f'{len(unknown)} keys have no upstream name (expected the keys of '
                              f'a classifier with out_indices=(3, )): {unknown}')
    return upstream


def infer_arch(state_dict: Dict[str, Tensor]) -> dict:
    """The ``QuadMamba`` arguments a converted state dict describes, from tensor shapes and
    block counts: ``arch`` (embed_dims, depths, ssm_ratio), ``d_state``, ``dt_rank``,
    ``mlp_ratio`` and ``quadtree_stages`` (the stages whose blocks scan 2 directions)."""
    def shape(key):
        try:
            return state_dict[key].shape
        except KeyError:
            raise ConversionError(f'cannot infer the architecture: missing key {key!r}') from None

    block = 'backbone.stages.{}.blocks.0.'
    embed_dims = shape('backbone.patch_embed.conv2.weight')[0]
    d_inner = shape(block.format(0) + 'op.in_proj.weight')[0]
    d_state = shape(block.format(0) + 'op.A_logs')[1]
    dt_rank = shape(block.format(0) + 'op.dt_projs_weight')[2]
    mlp_hidden = shape(block.format(0) + 'mlp.0.weight')[0]
    depths = [0, 0, 0, 0]
    for key in state_dict:
        match = re.match(r'backbone\.stages\.(\d+)\.blocks\.(\d+)\.', key)
        if match:
            stage, index = int(match.group(1)), int(match.group(2))
            if stage >= len(depths):
                raise ConversionError(f'expected 4 stages, found the key {key!r}')
            depths[stage] = max(depths[stage], index + 1)
    if 0 in depths:
        raise ConversionError(f'expected blocks in all 4 stages, found depths {depths}')
    quadtree_stages = tuple(i for i in range(4)
                            if shape(block.format(i) + 'op.x_proj_weight')[0] == 2)
    return dict(
        arch=dict(embed_dims=embed_dims, depths=tuple(depths), ssm_ratio=d_inner / embed_dims),
        d_state=d_state,
        dt_rank='auto' if dt_rank == math.ceil(embed_dims / 16) else dt_rank,
        mlp_ratio=mlp_hidden / embed_dims,
        quadtree_stages=quadtree_stages)


def arch_name(kwargs: dict) -> Optional[str]:
    """``'li'``, ``'t'``, ``'s'`` or ``'b'`` when ``kwargs`` (from :func:`infer_arch`) is that
    preset with every other argument at its default; None otherwise."""
    from ..models import QuadMamba
    if any(kwargs.get(k, v) != v for k, v in _DEFAULTS.items()):
        return None
    for name, arch in QuadMamba.arch_settings.items():
        if (arch['embed_dims'], tuple(arch['depths']), float(arch['ssm_ratio'])) == (
                kwargs['arch']['embed_dims'], tuple(kwargs['arch']['depths']),
                float(kwargs['arch']['ssm_ratio'])):
            return name
    return None


def backbone_config_text(kwargs: dict) -> str:
    """The ``backbone=dict(...)`` settings of a config for the architecture ``kwargs``
    describes (from :func:`infer_arch`), with the released scan layout."""
    arch = kwargs['arch']
    items = [f"arch=dict(embed_dims={arch['embed_dims']}, depths={tuple(arch['depths'])}, "
             f"ssm_ratio={arch['ssm_ratio']})"]
    items += [f'{k}={kwargs[k]!r}' for k, v in _DEFAULTS.items() if kwargs.get(k, v) != v]
    items.append("scan_layout='upstream'")
    return 'backbone=dict(' + ', '.join(items) + ')'


def convert_upstream_state_dict(upstream: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], dict]:
    """Rename every upstream key and check the result against the model it describes.

    Returns:
        The mmpretrain state dict (``backbone.*``, ``head.fc.*``) and the inferred
        ``QuadMamba`` arguments (see :func:`infer_arch`).

    Raises:
        ConversionError: naming unknown keys, missing keys or shape mismatches.
    """
    from ..models import QuadMamba

    converted, unknown = {}, []
    for key, value in upstream.items():
        try:
            converted[rename_key(key)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ConversionError(f'{len(unknown)} keys are not upstream QuadMamba keys: {unknown}')

    kwargs = infer_arch(converted)
    backbone = QuadMamba(**kwargs, out_indices=(3, ))
    expected = {f'backbone.{k}': v.shape for k, v in backbone.state_dict().items()}
    head_weight = converted.get('head.fc.weight')
    if head_weight is None:
        raise ConversionError("missing keys: ['classifier.head.weight'] (upstream name)")
    expected.update({'head.fc.weight': torch.Size([head_weight.shape[0], backbone.dims[-1]]),
                     'head.fc.bias': torch.Size([head_weight.shape[0]])})
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = [f'{k}: {tuple(converted[k].shape)} in the checkpoint, {tuple(expected[k])} expected'
             for k in sorted(set(expected) & set(converted)) if converted[k].shape != expected[k]]
    if missing or unexpected or wrong:
        raise ConversionError(f'the checkpoint does not match QuadMamba({kwargs}): '
                              f'missing {missing}, unexpected {unexpected}, wrong shapes {wrong}')
    return converted, kwargs
