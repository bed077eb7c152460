"""ONNX export of QuadMamba models and ONNX Runtime sessions: what the deployment tool uses.

The model kinds, as ``image -> tensor(s)`` modules (batch-first NCHW float input):

* :class:`ClassifierGraph`: an mmpretrain classifier, image -> class logits;
* :class:`SegmentorGraph`: an mmseg segmentor, image -> per-pixel class logits at the input
  size, or the label map (their argmax, as mmseg's ``predict`` takes it);
* :class:`FeatureGraph`: an mmdet detector's backbone and neck, image -> the FPN maps (the
  whole Mask R-CNN is :mod:`.mask_rcnn`).

:func:`export_onnx` writes one with either of torch's exporters (the default ``dynamo``, or the
older ``torchscript``); the selective scans take their exact standard-operator form by
themselves (:mod:`.mode`). :func:`ort_session` opens the file in ONNX Runtime with the settings
measured fastest on a CPU, :func:`operator_times` gives its profile by operator type, and
:func:`non_standard_ops` lists any operator outside the standard ONNX domains.
"""
import copy
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

EXPORTERS = ('dynamo', 'torchscript')
STANDARD_DOMAINS = ('', 'ai.onnx')
SEGMENTOR_OUTPUTS = ('logits', 'labels')


# What onnx_ir logs for every empty list attribute it writes: the Scan nodes without scan
# outputs (the passes that give only the block ends) have an empty ``scan_output_directions``,
# which it rightly writes as INTS. Nothing for a user to act on.
EMPTY_ATTRIBUTE_NOTE = 'Attribute type is ambiguous because it is an empty sequence'


class _DropEmptyAttributeNote(logging.Filter):

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(EMPTY_ATTRIBUTE_NOTE)


def quiet_exporter() -> None:
    """Keep onnx_ir's note on empty list attributes (above) out of the output; every other
    message of the exporter stays. Idempotent."""
    logger = logging.getLogger('onnx_ir._convenience')
    if not any(isinstance(f, _DropEmptyAttributeNote) for f in logger.filters):
        logger.addFilter(_DropEmptyAttributeNote())


class ClassifierGraph(nn.Module):
    """An mmpretrain ``ImageClassifier``: ``(B, 3, H, W)`` image -> ``(B, classes)`` logits."""
    output_names = ('logits', )

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.model = classifier

    def forward(self, image: Tensor) -> Tensor:
        return self.model(image, mode='tensor')


class SegmentorGraph(nn.Module):
    """An mmseg ``EncoderDecoder``: ``(B, 3, H, W)`` image -> ``(B, classes, H, W)`` logits
    (the decode head's output resized to the input as mmseg resizes it) or ``(B, H, W)`` int64
    labels (their argmax: mmseg's ``predict`` for an image the size of the input).

    Args:
        segmentor: the built segmentor.
        output: ``'logits'`` or ``'labels'``.
    """

    def __init__(self, segmentor: nn.Module, output: str = 'logits') -> None:
        super().__init__()
        if output not in SEGMENTOR_OUTPUTS:
            raise ValueError(f'output must be one of {SEGMENTOR_OUTPUTS}, got {output!r}')
        self.model, self.output = segmentor, output
        self.output_names = (output, )

    def forward(self, image: Tensor) -> Tensor:
        logits = F.interpolate(self.model._forward(image), size=image.shape[2:], mode='bilinear',
                               align_corners=self.model.align_corners)
        return logits if self.output == 'logits' else logits.argmax(1)


class FeatureGraph(nn.Module):
    """An mmdet detector's backbone and neck: image -> its feature maps (``feat0``, ...)."""

    def __init__(self, detector: nn.Module, num_outputs: int) -> None:
        super().__init__()
        self.model = detector
        self.output_names = tuple(f'feat{i}' for i in range(num_outputs))

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.model.extract_feat(image))


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two averaging matmuls over the same windows: the
    TorchScript exporter refuses output sizes that do not divide the input (UperNet's pyramid
    pooling: 1, 2, 3 and 6 cells of a 16x16 map at 512x512). torch's default exporter needs
    no replacement."""

    def __init__(self, output_size) -> None:
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size, ) * 2
        self.output_size = tuple(size)

    @staticmethod
    def pool_matrix(length: int, cells: int, like: Tensor) -> Tensor:
        """``(cells, length)``: row i averages ``[floor(i L / c), ceil((i+1) L / c))``."""
        matrix = torch.zeros(cells, length, dtype=like.dtype, device=like.device)
        for i in range(cells):
            start, end = (i * length) // cells, -(-((i + 1) * length) // cells)
            matrix[i, start:end] = 1.0 / (end - start)
        return matrix

    def forward(self, x: Tensor) -> Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        rows = self.pool_matrix(height, self.output_size[0] or height, x)
        cols = self.pool_matrix(width, self.output_size[1] or width, x)
        return rows @ x @ cols.t()


def with_matrix_pools(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every ``nn.AdaptiveAvgPool2d`` replaced by the equal
    :class:`MatrixAdaptiveAvgPool2d` (for the TorchScript exporter)."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.AdaptiveAvgPool2d):
            parent_name, _, attribute = name.rpartition('.')
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attribute, MatrixAdaptiveAvgPool2d(child.output_size))
    return module


def export_onnx(module: nn.Module,
                image: Tensor,
                path: Union[str, Path],
                exporter: str = 'dynamo',
                opset: Optional[int] = None,
                output_names: Optional[Sequence[str]] = None,
                dynamic_batch: bool = False,
                fold_transposes: bool = True) -> Path:
    """Write ``module`` (called on ``image``) to ``path`` as ONNX, input named ``'input'``.

    Args:
        module: an ``image -> tensor(s)`` module in eval mode (the graphs above, a
            ``QuadMamba`` backbone...).
        image: the example input ``(B, 3, H, W)``; H and W are fixed in the graph (the scan
            orders follow the map size).
        path: the ``.onnx`` file to write (folders are made).
        exporter: ``'dynamo'`` (torch's default ``torch.onnx.export``) or ``'torchscript'``
            (``dynamo=False``, deprecated by torch 2.9 and later).
        opset: the ONNX opset; None takes the exporter's default.
        output_names: names of the outputs (default: ``module.output_names`` if it has them).
        dynamic_batch: make the batch dimension dynamic.
        fold_transposes: rewrite the layout changes around the scans
            (:func:`fold_map_transposes`; the same values, faster in ONNX Runtime).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, got {exporter!r}')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(output_names or getattr(module, 'output_names', None) or [])
    options = dict(input_names=['input'], output_names=names or None)
    if opset is not None:
        options['opset_version'] = opset
    if dynamic_batch:
        options['dynamic_axes'] = {name: {0: 'batch'} for name in ['input'] + names}
        if image.shape[0] == 1:  # traced at batch 1, a size could be taken as the constant 1
            image = torch.cat([image, image])
    if exporter == 'dynamo':
        with torch.no_grad():
            torch.onnx.export(module, (image, ), str(path), dynamo=True, verbose=False,
                              **options)
    else:
        import warnings
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns for every Python-side size check of the models.
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            warnings.simplefilter('ignore', DeprecationWarning)
            torch.onnx.export(with_matrix_pools(module), (image, ), str(path), dynamo=False,
                              **options)
    if fold_transposes and not dynamic_batch:  # (the rewrite needs static shapes)
        import onnx
        model = onnx.load(str(path), load_external_data=False)
        if fold_map_transposes(model):
            onnx.save(model, str(path))
    return path


def fold_map_transposes(model) -> int:
    """Rewrite, in place, the layout changes around each selective scan of an exported
    ``onnx.ModelProto`` into ones ONNX Runtime removes; returns how many were rewritten.

    The scan reads its ``(B, D, H, W)`` map as ``(B, D, H*W)`` and needs tokens ``(B, H*W,
    D)``, and its ``(B, H*W, D)`` output goes on as ``(B, H, W, D)``. As exported, each is a
    Reshape and a Transpose on the 3-D view, which no runtime can merge with the 4-D layout
    changes next to them. Rewritten (same values):

    * ``Transpose(0, 2, 1)(Reshape(B, D, H*W)(x))`` -> ``Reshape(B, H*W, D)(Transpose(0, 2, 3,
      1)(x))``: the same transpose as the window predictor's of the same map (ONNX Runtime
      keeps one) and next to the convolution's layout change;
    * ``Transpose(0, 2, 3, 1)(Reshape(B, D, H, W)(Transpose(0, 2, 1)(y)))`` ->
      ``Reshape(B, H, W, D)(y)``: no transpose at all.

    Only static shapes are rewritten (a dynamic batch keeps the graph as it is).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    if not any(value.name for value in graph.value_info):
        model = onnx.shape_inference.infer_shapes(model)  # (a copy: shapes are read from it)
    shapes = {}
    for value in list(model.graph.value_info) + list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField('dim_value') for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    constants = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == 'Constant' and node.attribute and node.attribute[0].name == 'value':
            constants[node.output[0]] = node.attribute[0].t
    producer = {out: node for node in graph.node for out in node.output}
    users: Dict[str, List] = {}
    for node in graph.node:
        for name in _inputs_with_subgraphs(node):  # a Scan body reads outer values by name
            users.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}

    def perm(node) -> List[int]:
        return [list(a.ints) for a in node.attribute if a.name == 'perm'][0]

    def reshape_of(name: str):
        node = producer.get(name)
        if node is None or node.op_type != 'Reshape' or node.input[1] not in constants:
            return None
        return node

    def only_user(name: str) -> bool:
        return len(users.get(name, [])) == 1 and name not in outputs

    added, removed, count = [], set(), 0
    for node in list(graph.node):
        if node.op_type != 'Transpose' or id(node) in removed:
            continue
        if perm(node) == [0, 2, 1]:
            reshape = reshape_of(node.input[0])
            source = shapes.get(reshape.input[0]) if reshape is not None else None
            if source and len(source) == 4 and shapes.get(node.input[0]) == [
                    source[0], source[1], source[2] * source[3]]:
                # input side: the tokens of a (B, D, H, W) map
                name = node.output[0]
                moved = helper.make_node('Transpose', [reshape.input[0]], [name + '_nhwc'],
                                         perm=[0, 2, 3, 1], name=node.name + '_nhwc')
                shape = numpy_helper.from_array(
                    np.array([source[0], source[2] * source[3], source[1]], np.int64),
                    name + '_tokens_shape')
                graph.initializer.append(shape)
                added.append((node, [moved, helper.make_node(
                    'Reshape', [name + '_nhwc', shape.name], [name], name=node.name + '_tokens')]))
                removed.add(id(node))
                if only_user(reshape.output[0]):
                    removed.add(id(reshape))
                count += 1
                continue
            # output side: tokens -> (B, D, H, W) view -> (B, H, W, D)
            tokens = shapes.get(node.input[0])
            follow = users.get(node.output[0], [])
            if not (tokens and len(tokens) == 3 and only_user(node.output[0])
                    and follow[0].op_type == 'Reshape' and follow[0].input[1] in constants):
                continue
            reshape = follow[0]
            view = shapes.get(reshape.output[0])
            after = users.get(reshape.output[0], [])
            if not (view and len(view) == 4 and only_user(reshape.output[0])
                    and after[0].op_type == 'Transpose' and perm(after[0]) == [0, 2, 3, 1]
                    and view[0] == tokens[0] and view[1] == tokens[2]
                    and view[2] * view[3] == tokens[1]):
                continue
            last = after[0]
            shape = numpy_helper.from_array(
                np.array([view[0], view[2], view[3], view[1]], np.int64),
                last.output[0] + '_map_shape')
            graph.initializer.append(shape)
            added.append((node, [helper.make_node('Reshape', [node.input[0], shape.name],
                                                  [last.output[0]], name=node.name + '_map')]))
            removed.update({id(node), id(reshape), id(last)})
            count += 1
    if not count:
        return 0
    replacement = {id(old): new for old, new in added}
    nodes = []
    for node in graph.node:
        nodes.extend(replacement.get(id(node), []))
        if id(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in _inputs_with_subgraphs(node)}
    dropped = [i for i in graph.initializer if i.name not in used and i.name not in outputs]
    for initializer in dropped:  # the shapes of the removed Reshapes
        graph.initializer.remove(initializer)
    return count


def _subgraphs(node) -> list:
    """The graphs in a node's attributes (a Scan's body, an If's branches)."""
    graphs = []
    for attribute in node.attribute:
        graphs += ([attribute.g] if attribute.HasField('g') else []) + list(attribute.graphs)
    return graphs


def _inputs_with_subgraphs(node) -> List[str]:
    """The names a node reads: its inputs and those its subgraphs (a Scan body) read."""
    names = list(node.input)
    for graph in _subgraphs(node):
        for inner in graph.node:
            names.extend(_inputs_with_subgraphs(inner))
    return names


def ort_session(path: Union[str, Path], threads: Optional[int] = None, spinning: bool = False,
                profile_prefix: Optional[str] = None):
    """An ONNX Runtime CPU session for ``path``.

    Args:
        threads: intra-op threads (default: ``torch.get_num_threads()``, what PyTorch uses).
        spinning: let idle pool threads spin-wait for work. Off by default: on a machine
            shared with other processes, spinning threads take the cores the work needs
            (measured: 1.8x the latency on the project's busy 2-core machine).
        profile_prefix: record ONNX Runtime's profile (``session.end_profiling()`` writes it
            to a JSON file starting with this path).
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if spinning else '0')
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def _subgraph_node_names(graph) -> set:
    """Names of the nodes inside the subgraphs (Scan bodies...) of ``graph``'s nodes."""
    names = set()
    for node in graph.node:
        for body in _subgraphs(node):
            names.update(inner.name for inner in body.node)
            names.update(_subgraph_node_names(body))
    return names


def operator_times(path: Union[str, Path],
                   inputs: Union[Tensor, np.ndarray, Dict[str, np.ndarray]],
                   threads: Optional[int] = None, spinning: bool = False,
                   runs: int = 5) -> List[Tuple[str, float, float]]:
    """Where ONNX Runtime spends its time: ``(operator type, ms per run, calls per run)``, the
    most time first, from its profiler over ``runs`` runs after a warm-up (profiling adds time
    of its own). ``inputs``: the image of a one-input graph, or the feeds by input name.

    The nodes inside a ``Scan``'s body are counted as what they are (a ``Mul`` of a step is a
    ``Mul``, once per step), and ``Scan`` keeps only its own time (the profiler's time of a
    Scan node includes its body's nodes).
    """
    import json
    import tempfile

    import onnx
    inside = _subgraph_node_names(onnx.load(str(path), load_external_data=False).graph)
    with tempfile.TemporaryDirectory() as folder:
        session = ort_session(path, threads, spinning, profile_prefix=str(Path(folder) / 'ort'))
        if not isinstance(inputs, dict):
            inputs = {session.get_inputs()[0].name: np.asarray(inputs)}
        for _ in range(runs + 1):
            session.run(None, inputs)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    runs_seen = sorted((e for e in events if e.get('name') == 'model_run'), key=lambda e: e['ts'])
    # the first run is the warm-up (kept, and counted, where the profile does not mark runs)
    warmed_up = runs_seen[0]['ts'] + runs_seen[0]['dur'] if runs_seen else 0
    counted = runs if runs_seen else runs + 1
    total: Dict[str, float] = {}
    calls: Dict[str, int] = {}
    body_time = 0.0
    for event in events:
        if (event.get('cat') != 'Node' or not event['name'].endswith('_kernel_time')
                or event['ts'] < warmed_up):
            continue
        op, micros = event['args'].get('op_name', '?'), float(event['dur'])
        total[op] = total.get(op, 0.0) + micros
        calls[op] = calls.get(op, 0) + 1
        if event['name'][:-len('_kernel_time')] in inside:
            body_time += micros
    if 'Scan' in total:
        total['Scan'] -= body_time
    return sorted(((op, t / counted / 1e3, calls[op] / counted) for op, t in total.items()),
                  key=lambda row: -row[1])


def run_session(session, image: Union[Tensor, np.ndarray]) -> List[np.ndarray]:
    """All outputs of ``session`` for one input array."""
    array = image.numpy() if isinstance(image, Tensor) else image
    return session.run(None, {session.get_inputs()[0].name: array})


def non_standard_ops(model) -> Dict[str, List[str]]:
    """``{domain: [op types]}`` of the nodes outside the standard ONNX domains (empty when
    every node is a standard operator); ``model`` is an ``onnx.ModelProto`` or a path."""
    import onnx
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    found: Dict[str, set] = {}
    for graph in [model.graph] + list(model.functions):  # a local function's call counts too
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS:
                found.setdefault(node.domain, set()).add(node.op_type)
    return {domain: sorted(ops) for domain, ops in found.items()}


def sample_image(height: int = 240, width: int = 320, seed: int = 0) -> np.ndarray:
    """A photograph-like 8-bit BGR image (smooth lighting, discs of colour, blur and sensor
    noise): the default input of the deployment tool, where real image statistics matter
    more than a random tensor's (a scan sees long runs of similar tokens)."""
    import cv2
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([120 + 80 * np.sin(xx / 37 + c) * np.cos(yy / 53 - c) for c in range(3)],
                     -1)
    for _ in range(12):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(image, center, int(rng.integers(8, 60)), colour, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.5) + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)
