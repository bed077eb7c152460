"""QuadMamba: quadtree-based selective scan for a visual state space model.

Fei Xie, Weijia Zhang, Zhongdao Wang, Chao Ma. "QuadMamba: Learning Quadtree-based
Selective Scan for Visual State Space Model", NeurIPS 2024 (arXiv 2410.06806).
Architecture facts from the paper and the public code (VISION-SJTU/QuadMamba, built on
MzeroMiko/VMamba); this is an independent implementation.

Layout, from small to large: :class:`SS2D` (the state-space token mixer, cross or quadtree
scan) -> :class:`QuadMambaBlock` (pre-norm mixer + MLP) -> :class:`QuadMambaStage` ->
:class:`QuadMamba` (stem, 4 stages, per-output norms).

@inproceedings{xie2024quadmamba,
  title={QuadMamba: Learning Quadtree-based Selective Scan for Visual State Space Model},
  author={Xie, Fei and Zhang, Weijia and Wang, Zhongdao and Ma, Chao},
  booktitle={Advances in Neural Information Processing Systems},
  year={2024}}
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch import Tensor

from ..registry import MODELS
from .drop_path import DropPath
from .quadtree import LocalityPredictor, check_scan_layout, choose_window, window_scores
from .scan_patterns import CrossScan, QuadtreeScan, ScanPattern, UpstreamQuadtreeScan

# Omnidirectional shift: odd blocks roll the map by (sign_h * H//8, sign_w * W//8); the
# signs cycle with the global block index (index // 2 % 4).
SHIFT_DIRECTIONS = ((1, 1), (-1, -1), (1, -1), (-1, 1))


def scan_config(scan_cfg: Optional[dict], scan_backend: Optional[str]) -> dict:
    """The scan module's config from ``scan_cfg`` or the ``scan_backend`` shorthand."""
    if scan_cfg is not None and scan_backend is not None:
        raise ValueError('give scan_cfg or scan_backend, not both')
    if scan_cfg is None:
        return dict(type='SelectiveScan', backend=scan_backend or 'auto')
    return dict(scan_cfg)


class ScanOutNorm(nn.LayerNorm):
    """The LayerNorm of the scan's fp32 output, computed in fp32 in a model of any dtype.

    After ``.half()`` or ``.bfloat16()`` its weights are low precision, but its input, the
    scan output, stays fp32: the weights are upcast (a no-op in an fp32 model) rather than
    the input rounded before it is normalised."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                            self.bias.float(), self.eps)


class SS2D(nn.Module):
    """2-D selective-scan token mixer (VMamba's SS2D without the z gate).

    ``in_proj -> depthwise 3x3 conv -> SiLU -> K directional scans -> merge -> LayerNorm ->
    out_proj``. The K sequences come from the cross scan (K=4) or from the learned
    quadtree order and its reverse (K=2): a :class:`~.scan_patterns.ScanPattern`.

    From the conv to the scan and back the map is one ``(B, D, H*W)`` view, stored
    channel-last as the conv writes it; the scan reads it in place through the pattern's
    orders (the shift folded in, a learned window choice's gradient attached) and returns
    the K directions summed in map order, channel-last again, for the out-norm.

    Args:
        dims: input/output width C.
        d_state: SSM state size N.
        ssm_ratio: inner width ``d_inner = ssm_ratio * C``.
        dt_rank: rank of the delta projection; ``'auto'`` is ``ceil(C / 16)``.
        scan: ``'cross'`` or ``'quadtree'``.
        quadtree_grid: coarse windows per side of the quadtree (2: quadrants).
        quadtree_split: fine windows per side inside the chosen coarse window.
        fixed_window: refine this coarse window (raster index) always, with no predictor
            (an ablation); None learns the choice.
        scan_layout: ``'quadtree'`` (a true permutation, scored after the shift) or
            ``'upstream'`` (the released code's masked layout with its overlap, scored before
            the shift) for the quadtree scan; see :func:`upstream_quadtree_sequences`.
        gumbel_tau: temperature of the Gumbel-Softmax window choice.
        scan_cfg: config of the scan module, ``dict(type='SelectiveScan', backend='auto')``
            (see :class:`~.selective_scan.SelectiveScan`).
        scan_backend: shorthand for ``scan_cfg=dict(type='SelectiveScan', backend=...)``.
        dt_min, dt_max, dt_init_floor: range of the initial step size (mamba's init).
    """

    def __init__(self,
                 dims: int,
                 d_state: int = 1,
                 ssm_ratio: float = 2.0,
                 dt_rank: Union[int, str] = 'auto',
                 scan: str = 'cross',
                 quadtree_grid: int = 2,
                 quadtree_split: int = 2,
                 fixed_window: Optional[int] = None,
                 scan_layout: str = 'quadtree',
                 gumbel_tau: float = 1.0,
                 scan_cfg: Optional[dict] = None,
                 scan_backend: Optional[str] = None,
                 dt_min: float = 0.001,
                 dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        if scan not in ('cross', 'quadtree'):
            raise ValueError(f"scan must be 'cross' or 'quadtree', got {scan!r}")
        check_scan_layout(scan_layout, quadtree_grid, quadtree_split)
        if fixed_window is not None and not 0 <= fixed_window < quadtree_grid**2:
            raise ValueError(f'fixed_window must index the {quadtree_grid**2} coarse windows, '
                             f'got {fixed_window}')
        self.fixed_window = fixed_window
        d_inner = int(ssm_ratio * dims)
        self.dt_rank = math.ceil(dims / 16) if dt_rank == 'auto' else int(dt_rank)
        self.d_inner, self.d_state, self.scan = d_inner, d_state, scan
        self.quadtree_grid, self.quadtree_split, self.gumbel_tau = (quadtree_grid,
                                                                    quadtree_split, gumbel_tau)
        self.scan_layout = scan_layout
        self.selective_scan = MODELS.build(scan_config(scan_cfg, scan_backend))
        learned = scan == 'quadtree' and fixed_window is None
        self.pattern: ScanPattern = (
            CrossScan() if scan == 'cross' else UpstreamQuadtreeScan(learned)
            if scan_layout == 'upstream' else QuadtreeScan(quadtree_grid, quadtree_split, learned))
        k = self.num_directions = self.pattern.directions

        self.in_proj = nn.Linear(dims, d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=False)
        self.act = nn.SiLU()
        self.predictor = LocalityPredictor(d_inner) if learned else None
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_norm = ScanOutNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dims, bias=False)
        self._dt_init = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba's initialisation of the state-space parameters."""
        dt_min, dt_max, dt_init_floor = self._dt_init
        k, d_inner = self.num_directions, self.d_inner
        bound = self.d_inner**-0.5
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        dt_std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_projs_weight, -dt_std, dt_std)
        # softplus(bias) is a step size drawn log-uniformly from [dt_min, dt_max].
        dt = torch.exp(
            torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) +
            math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(
            torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(
                k * d_inner, 1))
        self.Ds.fill_(1.0)

    def window_choice(self, x: Tensor, shift: Optional[Tuple[int, int]]) -> Tensor:
        """``(B, G)`` one-hot choice of the coarse window to refine, from the token scores
        of the ``(B, D, H, W)`` map as the pattern's windows see them (or the fixed window)."""
        if self.predictor is None:  # fixed window: the same one-hot choice for every sample
            choice = x.new_zeros(x.shape[0], self.quadtree_grid**2)
            choice[:, self.fixed_window] = 1
            return choice
        token_scores = self.pattern.scored(self.predictor(x.permute(0, 2, 3, 1)), shift)
        return choose_window(window_scores(token_scores, self.quadtree_grid), self.training,
                             self.gumbel_tau)

    def forward(self, x: Tensor, shift: Optional[Tuple[int, int]] = None) -> Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``; ``shift`` rolls the map around the scan."""
        batch, height, width, _ = x.shape
        k, d, length = self.num_directions, self.d_inner, height * width
        x = self.act(self.conv2d(self.in_proj(x).permute(0, 3, 1, 2)))  # (B, D, H, W)
        # Stored channel-last (the conv keeps its input's channels_last format): this is a
        # view, which the CPU kernel reads as it is.
        flat = x.reshape(batch, d, length)
        choice = self.window_choice(x, shift) if self.scan == 'quadtree' else None
        in_place = self.pattern.map_orders(choice, height, width, shift, x.device)
        if in_place is not None:  # the kernels read the map through the orders
            (orders, order_index), merge = in_place, None
            source = self.pattern.scanned_map(flat, choice, height, width, shift)
        else:  # sequences gathered here (the released code's layout)
            orders = order_index = None
            source, merge = self.pattern.sequences(flat, choice, height, width, shift)
        y = self.selective_scan(source, self.x_proj_weight, self.dt_projs_weight,
                                self.dt_projs_bias.float(), -torch.exp(self.A_logs.float()),
                                self.Ds.float(), orders=orders, order_index=order_index)
        if merge is not None:
            y = merge(y.view(batch, k, d, length))
        y = y.view(batch, d, height, width).permute(0, 2, 3, 1)  # contiguous if y is channel-last
        return self.out_proj(self.out_norm(y).to(x.dtype))


class Mlp(nn.Sequential):
    """Linear -> GELU -> Linear, channel-last."""

    def __init__(self, dims: int, hidden: int) -> None:
        super().__init__(nn.Linear(dims, hidden), nn.GELU(), nn.Linear(hidden, dims))


class QuadMambaBlock(nn.Module):
    """Pre-norm block: ``x + DropPath(SS2D(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    Args:
        dims: width C.
        drop_path: stochastic depth rate of this block.
        mlp_ratio: MLP hidden width ``mlp_ratio * C``.
        shift_direction: ``(sign_h, sign_w)`` to roll the map by ``(H//8, W//8)`` around the
            scan, or None for no shift.
        **ss2d_kwargs: passed to :class:`SS2D`.
    """

    def __init__(self,
                 dims: int,
                 drop_path: float = 0.,
                 mlp_ratio: float = 4.0,
                 shift_direction: Optional[Tuple[int, int]] = None,
                 **ss2d_kwargs) -> None:
        super().__init__()
        self.shift_direction = shift_direction
        self.norm = nn.LayerNorm(dims)
        self.op = SS2D(dims, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dims)
        self.mlp = Mlp(dims, int(dims * mlp_ratio))

    def shift(self, height: int, width: int) -> Optional[Tuple[int, int]]:
        """The roll this block applies around its scan on a ``height x width`` map."""
        if self.shift_direction is None:
            return None
        sign_h, sign_w = self.shift_direction
        return sign_h * (height // 8), sign_w * (width // 8)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        x = x + self.drop_path(self.op(self.norm(x), self.shift(x.shape[1], x.shape[2])))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def channels_last_conv(*args, **kwargs) -> nn.Conv2d:
    """A conv for channel-last activations, its weight stored channels_last too: with a
    contiguous (NCHW) weight, oneDNN and cuDNN copy the weight into the input's format on
    every call (10 MB for the last downsample of QuadMamba-S). Loading a state dict, ``.to``
    and in-place initialisation keep the format."""
    conv = nn.Conv2d(*args, **kwargs)
    conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    return conv


class Downsample(nn.Module):
    """conv 3x3 stride 2 -> LayerNorm, channel-last in and out: ``(B, H, W, C_in)`` ->
    ``(B, ceil(H/2), ceil(W/2), C_out)``."""

    def __init__(self, in_dims: int, out_dims: int) -> None:
        super().__init__()
        self.reduction = channels_last_conv(in_dims, out_dims, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dims)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(x)


class PatchEmbed(nn.Module):
    """Two-conv stem: conv3x3 s2 (C/2) -> LN -> GELU -> conv3x3 s2 (C) -> LN.
    ``(B, 3, H, W)`` -> ``(B, ceil(H/4), ceil(W/4), C)``, channel-last."""

    def __init__(self, in_channels: int, dims: int) -> None:
        super().__init__()
        # channels_last: the conv then writes the channel-last map LN reads; no copy.
        self.conv1 = channels_last_conv(in_channels, dims // 2, 3, stride=2, padding=1)
        self.norm1 = nn.LayerNorm(dims // 2)
        self.act = nn.GELU()
        self.conv2 = channels_last_conv(dims // 2, dims, 3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm(dims)

    def forward(self, x: Tensor) -> Tensor:
        # An fp32 image meets a model cast to fp16/bf16 in the model's dtype (a no-op in an
        # fp32 model, and under autocast, which casts at the conv itself).
        x = x.to(self.conv1.weight.dtype)
        x = self.act(self.norm1(self.conv1(x).permute(0, 2, 3, 1)))
        return self.norm2(self.conv2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class QuadMambaStage(nn.Module):
    """Blocks of one resolution, then (except for the last stage) a downsample.

    Args:
        blocks: the stage's blocks.
        downsample: module applied after the blocks, or None.
        with_cp: gradient checkpointing of each block in training.
    """

    def __init__(self, blocks: Sequence[nn.Module], downsample: Optional[nn.Module],
                 with_cp: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.with_cp = with_cp

    def forward(self, x: Tensor, downsample: bool = True) -> Tuple[Tensor, Tensor]:
        """Returns the stage output before the downsample and the next stage's input (the
        output itself when ``downsample`` is False: no next stage runs)."""
        for block in self.blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x, (self.downsample(x) if downsample and self.downsample is not None else x)


@MODELS.register_module()
class QuadMamba(BaseModule):
    """QuadMamba backbone for classification, detection and segmentation.

    Stages 1-2 use quadtree (QuadVSS) blocks, stages 3-4 cross-scan (VSS) blocks, by default;
    ``quadtree_stages``, ``quadtree_grid/split`` and ``shift`` turn ablations into configs.

    Parameters that usually take no weight decay: ``A_logs`` and ``Ds`` (state-space
    parameters; note the original recipe decays ``A_logs`` and not ``Ds``), the LayerNorm
    weights and biases, and all biases. In mmengine:
    ``paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.,
    custom_keys={'.A_logs': dict(decay_mult=0.), '.Ds': dict(decay_mult=0.)})``.

    Args:
        arch: ``'li'``, ``'t'``, ``'s'``, ``'b'`` or a dict with ``embed_dims``, ``depths``
            and ``ssm_ratio``. Default: ``'t'``.
        in_channels: input image channels. Default: 3.
        out_indices: stages whose outputs are returned (NCHW, each with its own
            LayerNorm ``norm{i}``). Default: ``(3, )``.
        frozen_stages: freeze the stem and the first ``frozen_stages`` stages (parameters
            frozen, modules kept in eval mode); -1 freezes nothing. Default: -1.
        drop_path_rate: stochastic depth, rising linearly over all blocks. Default: 0.2.
        d_state: SSM state size. Default: 1.
        dt_rank: ``'auto'`` (``ceil(C/16)``) or an int. Default: ``'auto'``.
        mlp_ratio: MLP width ratio. Default: 4.0.
        quadtree_stages: indices of the stages that use quadtree blocks. Default: ``(0, 1)``.
        quadtree_grid: coarse windows per side. Default: 2.
        quadtree_split: fine windows per side in the chosen coarse window. Default: 2.
        quadtree_fixed_window: always refine this coarse window, without locality
            predictors (ablation). Default: None (learned).
        scan_layout: ``'quadtree'`` (default: one true permutation) or ``'upstream'`` (the
            released code's sequence layout, overlap included, for its checkpoints; needs
            input sides divisible by 32). See the README.
        shift: omnidirectional shift on the odd blocks of quadtree stages. Default: True.
        gumbel_tau: Gumbel-Softmax temperature. Default: 1.0.
        scan_cfg: config of the selective-scan module of every block. Default:
            ``dict(type='SelectiveScan', backend='auto')``.
        scan_backend: shorthand for ``scan_cfg=dict(type='SelectiveScan', backend=...)``
            (``'auto'``, ``'chunked'``, ``'triton'``, ``'reference'``, ``'segsum'``).
            Default: None.
        with_cp: gradient checkpointing (same outputs, less memory). Default: False.
        init_cfg: mmengine init config, e.g. ``dict(type='Pretrained', checkpoint=...,
            prefix='backbone.')``. Default: None.
    """
    arch_settings: Dict[str, dict] = {
        'li': dict(embed_dims=48, depths=(2, 2, 2, 2), ssm_ratio=1.0),
        't': dict(embed_dims=64, depths=(2, 6, 2, 2), ssm_ratio=1.0),
        's': dict(embed_dims=96, depths=(2, 2, 5, 2), ssm_ratio=2.0),
        'b': dict(embed_dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0),
    }
    num_stages = 4

    def __init__(self,
                 arch: Union[str, dict] = 't',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (3, ),
                 frozen_stages: int = -1,
                 drop_path_rate: float = 0.2,
                 d_state: int = 1,
                 dt_rank: Union[int, str] = 'auto',
                 mlp_ratio: float = 4.0,
                 quadtree_stages: Sequence[int] = (0, 1),
                 quadtree_grid: int = 2,
                 quadtree_split: int = 2,
                 quadtree_fixed_window: Optional[int] = None,
                 scan_layout: str = 'quadtree',
                 shift: bool = True,
                 gumbel_tau: float = 1.0,
                 scan_cfg: Optional[dict] = None,
                 scan_backend: Optional[str] = None,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        self.embed_dims, self.depths = arch['embed_dims'], tuple(arch['depths'])
        self.dims = [self.embed_dims * 2**i for i in range(self.num_stages)]
        self.in_channels = in_channels
        self.out_indices = self._check_indices(out_indices, 'out_indices')
        self.quadtree_stages = self._check_indices(quadtree_stages, 'quadtree_stages')
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {self.num_stages}], '
                             f'got {frozen_stages}')
        self.frozen_stages = frozen_stages
        check_scan_layout(scan_layout, quadtree_grid, quadtree_split)
        self.scan_layout = scan_layout
        scan_cfg = scan_config(scan_cfg, scan_backend)
        MODELS.build(scan_cfg)  # a bad scan config fails here, once, by name

        self.patch_embed = PatchEmbed(in_channels, self.embed_dims)
        drop_rates = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.stages = nn.ModuleList()
        block_index = 0
        for i, (dims, depth) in enumerate(zip(self.dims, self.depths)):
            quadtree = i in self.quadtree_stages
            blocks = []
            for j in range(depth):
                shift_direction = None
                if quadtree and shift and j % 2 == 1:
                    shift_direction = SHIFT_DIRECTIONS[block_index // 2 % 4]
                blocks.append(
                    QuadMambaBlock(
                        dims,
                        drop_path=drop_rates[block_index],
                        mlp_ratio=mlp_ratio,
                        shift_direction=shift_direction,
                        d_state=d_state,
                        ssm_ratio=arch['ssm_ratio'],
                        dt_rank=dt_rank,
                        scan='quadtree' if quadtree else 'cross',
                        quadtree_grid=quadtree_grid,
                        quadtree_split=quadtree_split,
                        fixed_window=quadtree_fixed_window,
                        scan_layout=scan_layout,
                        gumbel_tau=gumbel_tau,
                        scan_cfg=scan_cfg))
                block_index += 1
            downsample = Downsample(dims, self.dims[i + 1]) if i < self.num_stages - 1 else None
            self.stages.append(QuadMambaStage(blocks, downsample, with_cp))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.dims[i]))

        # The quadtree of stage i needs grid*split tokens per side at stride 2**(i+2).
        self.min_input_size = max([
            quadtree_grid * quadtree_split * 2**(i + 2) for i in self.quadtree_stages
        ] + [32])
        self.apply(self._init_module)
        self._freeze_stages()

    def _parse_arch(self, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            if arch not in self.arch_settings:
                raise ValueError(f'unknown QuadMamba arch {arch!r}; choose one of '
                                 f'{sorted(self.arch_settings)} or pass a dict')
            return self.arch_settings[arch]
        missing = {'embed_dims', 'depths', 'ssm_ratio'} - set(arch)
        if missing:
            raise ValueError(f'a custom arch dict needs the keys {sorted(missing)}')
        if len(arch['depths']) != self.num_stages:
            raise ValueError(f'arch depths must have {self.num_stages} entries, '
                             f'got {arch["depths"]}')
        return arch

    def _check_indices(self, indices: Sequence[int], name: str) -> Tuple[int, ...]:
        indices = tuple(i % self.num_stages if i < 0 else i for i in indices)
        bad = [i for i in indices if not 0 <= i < self.num_stages]
        if bad:
            raise ValueError(f'{name} must index the {self.num_stages} stages, got {bad}')
        return indices

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def init_weights(self) -> None:
        """mmengine's ``init_weights``, with a ``Pretrained`` init_cfg checked: the checkpoint
        must fit the backbone (``quadmamba_mm.checkpoints.fit``; the config's
        ``checkpoint_fit`` setting relaxes it), and a local file that does not exist warns
        once and leaves the random initialisation."""
        from ..checkpoints.fit import init_weights_checked
        init_weights_checked(self, super().init_weights)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f'QuadMamba expects a 4-D (N, C, H, W) tensor, got shape '
                             f'{tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'QuadMamba was built for {self.in_channels} input channels, '
                             f'got {x.shape[1]} (input shape {tuple(x.shape)})')
        if self.scan_layout == 'upstream' and self.quadtree_stages and (x.shape[2] % 32 or
                                                                        x.shape[3] % 32):
            raise ValueError(f"scan_layout='upstream' needs input sides divisible by 32, got "
                             f'{x.shape[2]}x{x.shape[3]}; the default layout takes any size')
        if min(x.shape[2:]) < self.min_input_size:
            raise ValueError(f'input size {x.shape[2]}x{x.shape[3]} is below the minimum '
                             f'{self.min_input_size}x{self.min_input_size} of this QuadMamba '
                             f'(its quadtree stages need that many pixels per side)')

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """``(N, C, H, W)`` -> tuple of NCHW maps of ``ceil(H / 2**(i+2))`` for ``out_indices``."""
        outs = self.forward_stages(x, max(self.out_indices, default=-1) + 1)
        return tuple(
            getattr(self, f'norm{i}')(outs[i]).permute(0, 3, 1, 2).contiguous()
            for i in self.out_indices)

    def forward_stages(self, x: Tensor, num_stages: Optional[int] = None) -> List[Tensor]:
        """The channel-last ``(N, ceil(H / 2**(i+2)), ceil(W / 2**(i+2)), C_i)`` outputs of
        the first ``num_stages`` stages (default: all), before any output norm; the stages
        after them do not run. :meth:`forward` and the timm models take their outputs from it.
        """
        self._check_input(x)
        x = self.patch_embed(x)
        stages = self.stages if num_stages is None else self.stages[:num_stages]
        outs = []
        for i, stage in enumerate(stages):
            out, x = stage(x, downsample=i < len(stages) - 1)
            outs.append(out)
        return outs

    def _freeze_stages(self) -> None:
        frozen = [self.patch_embed] if self.frozen_stages >= 0 else []
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'QuadMamba':
        super().train(mode)
        self._freeze_stages()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer depth for layer-wise learning-rate decay (mmpretrain's convention).

        The stem is layer 0, block j of stage i is ``sum(depths[:i]) + j + 1``, a stage's
        downsample belongs to its last block, everything else (norms, head) to the top.

        Returns:
            ``(layer_depth, num_layers)``.
        """
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name.startswith('patch_embed'):
            return 0, num_layers
        if name.startswith('stages.'):
            parts = name.split('.')
            stage = int(parts[1])
            if parts[2] == 'blocks':
                return sum(self.depths[:stage]) + int(parts[3]) + 1, num_layers
            return sum(self.depths[:stage + 1]), num_layers
        return num_layers - 1, num_layers
