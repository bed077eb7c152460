"""QuadMamba as timm models: ``timm.create_model('quadmamba_li' | 't' | 's' | 'b', ...)``.

Importing ``quadmamba_mm`` with timm installed registers the four models. Each wraps the
one :class:`~.quadmamba.QuadMamba` backbone (``out_indices=(3, )``, as in the mmpretrain
classifier) with timm's model contract: a ``pretrained_cfg``, ``forward_features`` /
``forward_head``, ``reset_classifier``, ``forward_intermediates`` and
``prune_intermediate_layers`` (so ``features_only=True`` works through timm's feature getter),
gradient checkpointing, and the no-weight-decay and parameter-group hints of timm's
optimizer factory. The parameter names are those of the mmpretrain classifier
(``backbone.*``, ``head.fc.*``), so its checkpoints load as they are.

No weights are downloadable. A local checkpoint loads through timm's pretrained machinery::

    model = timm.create_model('quadmamba_t', pretrained=True,
                              pretrained_cfg_overlay=dict(file='quadmamba-t_in1k.pth'))

The file is read weights-only by timm and goes through :func:`checkpoint_filter_fn`: an
mmpretrain classifier checkpoint of this project (``configs/quadmamba/``, or the released
weights converted by ``tools/model_converters/quadmamba2mm.py``) or an upstream QuadMamba
state dict (converted by :mod:`quadmamba_mm.checkpoints.upstream`). The released weights
were trained with the released scan layout: load them with the ``upstream_in1k`` tag
(``'quadmamba_s.upstream_in1k'``), which builds the model with ``scan_layout='upstream'``.
The released file itself pickles a yacs config, which the weights-only load refuses: convert
it first (its state dict, given as ``pretrained_cfg_overlay=dict(state_dict=...)``, also
loads).
"""
import re
import warnings
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._manipulate import MATCH_PREV_GROUP
from torch import Tensor

from ..checkpoints.fit import check_fit
from ..checkpoints.upstream import convert_upstream_state_dict, upstream_state_dict
from .quadmamba import QuadMamba

__all__ = ['QuadMambaTimm', 'checkpoint_filter_fn']

OUTPUT_FORMATS = ('NCHW', 'NHWC')
# Model arguments a pretrained tag implies: weights are used with the layout they were
# trained with (the released weights: the released scan layout).
TAG_MODEL_ARGS: Dict[str, dict] = {'upstream_in1k': dict(scan_layout='upstream')}
# Keys only an upstream (VISION-SJTU/QuadMamba) state dict has.
_UPSTREAM_KEY = re.compile(r'^(layers\.\d+\.|patch_embed\.\d+\.|classifier\.(norm|head)\.)')


class QuadMambaTimm(nn.Module):
    """A QuadMamba ImageNet classifier with timm's model interface.

    ``backbone`` (a :class:`QuadMamba` with its last output norm ``norm3``) -> global
    pooling -> dropout -> ``head.fc``. Features are channel-last inside; ``forward_features``
    returns the normed last stage as ``(N, H/32, W/32, C)`` (``output_fmt = 'NHWC'``) and
    ``forward_intermediates`` either format.

    Args:
        arch: ``'li'``, ``'t'``, ``'s'``, ``'b'`` or an arch dict (see :class:`QuadMamba`).
        in_chans: input image channels. Default: 3.
        num_classes: classes of the head; 0 leaves no classifier (pooled features out).
            Default: 1000.
        global_pool: timm pooling type (``'avg'``, ``'max'``, ``'avgmax'``, ``''`` for none).
            Default: ``'avg'``.
        drop_rate: dropout before the classifier. Default: 0.
        drop_path_rate: stochastic depth of the backbone. Default: 0.
        **kwargs: further :class:`QuadMamba` arguments (``scan_backend``, ``scan_layout``,
            ``quadtree_stages``, ``with_cp``, ...).
    """
    output_fmt = 'NHWC'

    def __init__(self,
                 arch: Union[str, dict] = 't',
                 in_chans: int = 3,
                 num_classes: int = 1000,
                 global_pool: str = 'avg',
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 **kwargs) -> None:
        super().__init__()
        for name in ('out_indices', 'in_channels', 'init_cfg'):
            if name in kwargs:
                raise ValueError(
                    f'QuadMambaTimm does not take {name}: the backbone keeps its last output '
                    'norm only; use features_only=True with out_indices for feature maps, '
                    'in_chans for the input channels, pretrained_cfg_overlay for weights')
        self.backbone = QuadMamba(arch, in_channels=in_chans, out_indices=(3, ),
                                  drop_path_rate=drop_path_rate, **kwargs)
        self.in_chans, self.num_classes, self.drop_rate = in_chans, num_classes, drop_rate
        dims = self.backbone.dims
        self.num_features = self.head_hidden_size = dims[-1]
        self.feature_info = [
            dict(num_chs=c, reduction=2**(i + 2), module=f'backbone.stages.{i}')
            for i, c in enumerate(dims)
        ]
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool,
                                   drop_rate=drop_rate, input_fmt=self.output_fmt)
        self.head.apply(QuadMamba._init_module)  # the backbone's Linear init (trunc normal)

    @property
    def norm(self) -> nn.Module:
        """The final norm: the backbone's ``norm3`` (an Identity once pruned)."""
        return self.backbone.norm3

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> the normed last stage, ``(N, ceil(H/32), ceil(W/32), C_4)``."""
        return self.norm(self.backbone.forward_stages(x)[-1])

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, dropout and classify ``forward_features``' output (``pre_logits``: pooled
        features, ``(N, num_features)``)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """timm's feature API: the outputs of the stages in ``indices``.

        Args:
            x: ``(N, C, H, W)`` images.
            indices: stage indices (negative from the end), or an int n for the last n
                stages; None: all stages.
            norm: apply the final norm to the last stage's output, if it is taken.
            stop_early: run no stage after the last one taken.
            output_fmt: ``'NCHW'`` (contiguous) or ``'NHWC'`` (channel-last, as computed).
            intermediates_only: return only the intermediates.

        Returns:
            The list of stage outputs (stride ``2**(i+2)``), or ``(final features, list)``
            where the final features are those of :meth:`forward_features` (the last stage
            run, normed if it is the last stage of the model).
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f'output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}')
        num_stages = len(self.backbone.stages)
        take_indices, max_index = feature_take_indices(num_stages, indices)
        last = num_stages - 1
        run = max_index + 1 if stop_early or intermediates_only else num_stages
        outs = self.backbone.forward_stages(x, run)
        intermediates = []
        for i in take_indices:
            out = self.norm(outs[i]) if norm and i == last else outs[i]
            intermediates.append(out.permute(0, 3, 1, 2).contiguous()
                                 if output_fmt == 'NCHW' else out)
        if intermediates_only:
            return intermediates
        final = outs[-1]
        return (self.norm(final) if len(outs) - 1 == last else final), intermediates

    def prune_intermediate_layers(self,
                                  indices: Union[int, List[int]] = 1,
                                  prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the downsample of that one),
        the final norm when ``prune_norm`` or when its stage is dropped, and the classifier
        when ``prune_head``. Returns the absolute indices."""
        num_stages = len(self.backbone.stages)
        take_indices, max_index = feature_take_indices(num_stages, indices)
        stages = self.backbone.stages
        if max_index < num_stages - 1:
            self.backbone.stages = stages[:max_index + 1]
            stages[max_index].downsample = None
            prune_norm = True
        if prune_norm:
            self.backbone.norm3 = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new, freshly initialised classifier for ``num_classes`` (0: none), and the
        pooling type ``global_pool`` if given."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
        self.head.fc.apply(QuadMamba._init_module)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing of every block in training (the backbone's ``with_cp``)."""
        for stage in self.backbone.stages:
            stage.with_cp = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The state-space parameters ``A_logs`` and ``Ds``, by full name (timm excludes
        biases and 1-D parameters by itself), as the mmpretrain configs do."""
        return {name for name, _ in self.named_parameters()
                if name.rsplit('.', 1)[-1] in ('A_logs', 'Ds')}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for timm's layer-wise LR decay: the stem, then the blocks (the
        stages when ``coarse``) in order, a stage's downsample with its last block (as
        ``QuadMamba.get_layer_depth`` has it) and the final norm with the last block; the
        head is the last group."""
        with_previous = [(r'^backbone\.norm3', MATCH_PREV_GROUP)]
        if not coarse:
            with_previous.insert(0, (r'^backbone\.stages\.(\d+)\.downsample', MATCH_PREV_GROUP))
        unit = r'^backbone\.stages\.(\d+)' + ('' if coarse else r'\.blocks\.(\d+)')
        return dict(stem=r'^backbone\.patch_embed', blocks=[(unit, None)] + with_previous)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: QuadMambaTimm) -> Dict[str, Tensor]:
    """The weights of a QuadMamba checkpoint under :class:`QuadMambaTimm`'s names, checked
    against ``model``.

    Accepts an mmpretrain classifier checkpoint or its state dict (``state_dict`` with
    ``backbone.*`` and ``head.fc.*`` keys: what timm reads from a Runner checkpoint), a state
    dict of this class (the same keys), and an upstream QuadMamba checkpoint or state dict
    (``model`` / ``layers.*`` keys), which :func:`convert_upstream_state_dict` renames. The
    result is checked with :func:`~quadmamba_mm.checkpoints.fit.check_fit`: every tensor of
    the model must load with its shape, except the classifier (another class count) and the
    first conv (another input channel count, which timm adapts).

    Raises:
        ConversionError: an upstream state dict with unknown or missing keys.
        CheckpointFitError: the weights do not fit ``model``.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f'expected a checkpoint dict, got {type(state_dict).__name__}')
    if isinstance(state_dict.get('state_dict'), dict):
        state_dict = state_dict['state_dict']
    elif isinstance(state_dict.get('model'), dict):
        state_dict = upstream_state_dict(state_dict)
    upstream = any(_UPSTREAM_KEY.match(key) for key in state_dict)
    if upstream:
        state_dict, _ = convert_upstream_state_dict(state_dict)
        if model.backbone.scan_layout != 'upstream':
            warnings.warn(
                'loading upstream QuadMamba weights into a model with '
                f"scan_layout={model.backbone.scan_layout!r}: they were trained with the released "
                "layout; use the 'upstream_in1k' tag (or scan_layout='upstream') to get the "
                'upstream outputs')
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    # The 'init' policy already allows the class-count layers (the classifier).
    allow = [] if (cfg.get('input_size') or (3, ))[0] == model.in_chans else [
        r'^backbone\.patch_embed\.conv1\.weight$'
    ]
    name = cfg.get('file') or ('an upstream state dict' if upstream else 'a state dict')
    check_fit(model, state_dict, str(name), 'init', min_fraction=1.0, required=None,
              allow=allow, logger=None)
    return state_dict


def _cfg(**kwargs) -> dict:
    return dict(
        url='',
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,  # the mmpretrain test pipeline: short side 256, centre crop 224
        interpolation='bicubic',
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv='backbone.patch_embed.conv1',
        classifier='head.fc',
        license='apache-2.0',
        paper_ids='arXiv:2410.06806',
        paper_name='QuadMamba: Learning Quadtree-based Selective Scan for Visual State '
        'Space Model',
        **kwargs)


default_cfgs = generate_default_cfgs({
    # An ImageNet-1k classifier trained with configs/quadmamba/ (no published weights).
    'quadmamba_li.in1k': _cfg(),
    'quadmamba_t.in1k': _cfg(),
    'quadmamba_s.in1k': _cfg(),
    'quadmamba_b.in1k': _cfg(),
    # The released QuadMamba-v3 weights (82.2 top-1), scanned with the released layout.
    'quadmamba_s.upstream_in1k': _cfg(origin_url='https://github.com/VISION-SJTU/QuadMamba'),
})


def _create_quadmamba(variant: str, arch: str, pretrained: bool = False,
                      **kwargs) -> QuadMambaTimm:
    tag = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg')).tag
    kwargs = dict(TAG_MODEL_ARGS.get(tag, {}), **kwargs)
    return build_model_with_cfg(
        QuadMambaTimm,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)),
        arch=arch,
        **kwargs)


@register_model
def quadmamba_li(pretrained: bool = False, **kwargs) -> QuadMambaTimm:
    """QuadMamba-Li: 5.47 M parameters, 0.82 GFLOPs at 224 (1000 classes)."""
    return _create_quadmamba('quadmamba_li', 'li', pretrained, **kwargs)


@register_model
def quadmamba_t(pretrained: bool = False, **kwargs) -> QuadMambaTimm:
    """QuadMamba-T: 10.32 M parameters, 2.07 GFLOPs at 224 (1000 classes)."""
    return _create_quadmamba('quadmamba_t', 't', pretrained, **kwargs)


@register_model
def quadmamba_s(pretrained: bool = False, **kwargs) -> QuadMambaTimm:
    """QuadMamba-S: 31.25 M parameters, 5.51 GFLOPs at 224 (1000 classes)."""
    return _create_quadmamba('quadmamba_s', 's', pretrained, **kwargs)


@register_model
def quadmamba_b(pretrained: bool = False, **kwargs) -> QuadMambaTimm:
    """QuadMamba-B: 50.69 M parameters, 9.36 GFLOPs at 224 (1000 classes)."""
    return _create_quadmamba('quadmamba_b', 'b', pretrained, **kwargs)
