"""Layer-wise learning-rate decay for any model whose backbone has ``get_layer_depth``.

mmdet's and mmseg's ``LearningRateDecayOptimizerConstructor`` only know ConvNeXt/BEiT/MAE, and
mmpretrain's needs ``get_layer_depth`` on the whole model. This constructor asks the model, or
else its backbone (with the prefix ``backbone.``), for every parameter's depth; parameters
outside the backbone (neck, heads) get the full learning rate.
"""
from typing import List

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``lr = base_lr * layer_decay_rate ** (num_layers - 1 - layer_depth)`` per parameter.

    ``paramwise_cfg`` takes ``layer_decay_rate`` (default 1.0, no decay) besides every key of
    mmengine's ``DefaultOptimWrapperConstructor`` (``custom_keys``, ``norm_decay_mult``,
    ``bias_decay_mult``, ``flat_decay_mult``, ...), which still apply.

    Example::

        optim_wrapper = dict(
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
            constructor='LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.9, norm_decay_mult=0., bias_decay_mult=0.,
                               custom_keys={'.A_logs': dict(decay_mult=0.),
                                            '.Ds': dict(decay_mult=0.)}))
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict = None) -> None:
        # The key stays in paramwise_cfg: mmengine skips add_params when it is empty.
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.layer_decay_rate = float(self.paramwise_cfg.get('layer_decay_rate', 1.0))

    @staticmethod
    def _depth_fn(model: nn.Module):
        if hasattr(model, 'get_layer_depth'):
            return lambda name: model.get_layer_depth(name)
        backbone = getattr(model, 'backbone', None)
        if backbone is None or not hasattr(backbone, 'get_layer_depth'):
            raise TypeError(f'{type(model).__name__} has no get_layer_depth, and neither has its '
                            'backbone: layer-wise LR decay needs one of them')
        return lambda name: backbone.get_layer_depth(name, 'backbone.')

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   **kwargs) -> None:
        super().add_params(params, module, prefix, **kwargs)
        if prefix:  # mmengine recurses through add_params: scale once, at the top
            return
        names = {id(p): name for name, p in module.named_parameters()}
        depth_of = self._depth_fn(module)
        for group in params:
            depth, num_layers = depth_of(names[id(group['params'][0])])
            scale = self.layer_decay_rate**(num_layers - 1 - depth)
            group['lr'] = group.get('lr', self.base_lr) * scale
            group['layer_depth'] = depth
