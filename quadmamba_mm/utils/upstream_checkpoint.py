"""Upstream QuadMamba classification checkpoints -> mmpretrain checkpoints of this project.

The released code (VISION-SJTU/QuadMamba) saves ``{'model': state_dict, 'model_ema': ...,
'optimizer': ..., 'config': <yacs CfgNode>, ...}``. :func:`load_untrusted_checkpoint` reads
such a file without running any of its code; :func:`convert_upstream_state_dict` renames every
key (an unknown key is an error) and checks the result against the model it describes.
"""
import _compat_pickle
import pickle
import re
import types
from typing import Dict, List, Tuple

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


def infer_arch(state_dict: Dict[str, Tensor]) -> dict:
    """``arch`` (embed_dims, depths, ssm_ratio) and ``d_state`` of a converted state dict."""
    try:
        embed_dims = state_dict['backbone.patch_embed.conv2.weight'].shape[0]
        d_inner = state_dict['backbone.stages.0.blocks.0.op.in_proj.weight'].shape[0]
        d_state = state_dict['backbone.stages.0.blocks.0.op.A_logs'].shape[1]
    except KeyError as missing:
        raise ConversionError(f'cannot infer the architecture: missing key {missing}') from None
    depths = [0, 0, 0, 0]
    for key in state_dict:
        match = re.match(r'backbone\.stages\.(\d+)\.blocks\.(\d+)\.', key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            depths[stage] = max(depths[stage], block + 1)
    return dict(arch=dict(embed_dims=embed_dims, depths=tuple(depths),
                          ssm_ratio=d_inner / embed_dims), d_state=d_state)


def convert_upstream_state_dict(upstream: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], dict]:
    """Rename every upstream key and check the result against the model it describes.

    Returns:
        The mmpretrain state dict (``backbone.*``, ``head.fc.*``) and the inferred
        ``QuadMamba`` arguments (``arch``, ``d_state``).

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
    wrong = [f'{k}: {tuple(converted[k].shape)} vs {tuple(expected[k])}'
             for k in sorted(set(expected) & set(converted)) if converted[k].shape != expected[k]]
    if missing or unexpected or wrong:
        raise ConversionError(f'the checkpoint does not match QuadMamba({kwargs}): '
                              f'missing {missing}, unexpected {unexpected}, wrong shapes {wrong}')
    return converted, kwargs
