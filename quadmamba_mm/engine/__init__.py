"""Training utilities registered for all three toolboxes."""
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT_CONSTRUCTORS

from .layer_decay import LayerDecayOptimWrapperConstructor

# Same bridge as the models: unprefixed names resolve from mmdet/mmseg/mmpretrain scopes.
ROOT_CONSTRUCTORS.register_module(module=LayerDecayOptimWrapperConstructor)

__all__ = ['LayerDecayOptimWrapperConstructor']
