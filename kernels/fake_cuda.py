"""CUDA tensors without a GPU: :func:`fake_cuda`, for checks of device placement and of the
GPU launch code on machines that have no GPU (CI).

Under ``torch._subclasses.fake_tensor.FakeTensorMode`` tensors carry shape, dtype, strides
and device but no data; a tensor on ``'cuda'`` needs no driver, and mixing it with a CPU
tensor raises ``FakeTensorDeviceMismatchError``, as on a GPU. Triton kernels wrapped by
``torch.library.wrap_triton`` are not launched on fake tensors. ``torch.autocast('cuda')``
checks for a driver and turns itself off without one; here it stays on, so that the dtypes
under autocast are those a GPU run gets.
"""
import contextlib
from typing import Iterator
from unittest import mock

import torch


@contextlib.contextmanager
def fake_cuda() -> Iterator['torch._subclasses.fake_tensor.FakeTensorMode']:
    """A ``FakeTensorMode`` in which ``'cuda'`` tensors and ``torch.autocast('cuda')`` work
    without a GPU. Every tensor used inside must be made inside (or come from
    ``mode.from_tensor``): a real tensor mixed in raises, as a host-only path should."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch('torch.cuda.amp.common.amp_definitely_not_available',
                                       return_value=False))
        stack.enter_context(mock.patch('torch.cuda.is_bf16_supported', return_value=True))
        mode = stack.enter_context(FakeTensorMode(allow_non_fake_inputs=False))
        yield mode


def is_faking() -> bool:
    """Whether a ``FakeTensorMode`` is active (tensors made now have no data)."""
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()`` on fake CUDA tensors.

    The autograd engine runs CUDA work on a device thread that asks the driver for its
    context, which fails without a GPU. This walks the same graph on the calling thread:
    each node of ``loss.grad_fn``'s graph is called once, in topological order, with the
    sum of the gradients its consumers gave it; leaf gradients accumulate into ``.grad``.
    """
    order, seen, stack = [], set(), [(loss.grad_fn, False)]
    while stack:  # iterative depth-first post-order: the graph of a backbone is deep
        node, expanded = stack.pop()
        if node is None or (not expanded and node in seen):
            continue
        if expanded:
            order.append(node)
            continue
        seen.add(node)
        stack.append((node, True))
        stack.extend((child, False) for child, _ in node.next_functions if child is not None)
    grads = {loss.grad_fn: [torch.ones_like(loss)]}
    for node in reversed(order):
        inputs = grads.pop(node, None)
        if inputs is None:
            continue
        if node.name() == 'torch::autograd::AccumulateGrad':
            leaf = node.variable
            leaf.grad = inputs[0] if leaf.grad is None else leaf.grad + inputs[0]
            continue
        # C++ nodes are called; a Python autograd.Function's node runs its backward by apply.
        outputs = node(*inputs) if callable(node) else node.apply(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs, )
        for (child, slot), grad in zip(node.next_functions, outputs):
            if child is None or grad is None:
                continue
            grad = _as_expected(grad, child, slot)
            buffer = grads.setdefault(child, [None] * _n_inputs(child))
            buffer[slot] = grad if buffer[slot] is None else buffer[slot] + grad


def _expected(node, slot):
    if node.name() == 'torch::autograd::AccumulateGrad':
        return node.variable
    metadata = getattr(node, '_input_metadata', None)
    return metadata[slot] if metadata is not None and slot < len(metadata) else None


def _as_expected(grad: torch.Tensor, node, slot: int) -> torch.Tensor:
    """What the engine does to a gradient before a node gets it: summed to the shape of the
    forward's output (broadcasts) and cast to its dtype."""
    expected = _expected(node, slot)
    if expected is None:
        return grad
    shape = tuple(expected.shape)
    if tuple(grad.shape) != shape:
        grad = grad.sum_to_size(shape)
    return grad if grad.dtype == expected.dtype else grad.to(expected.dtype)


def _n_inputs(node) -> int:
    """How many gradients a node takes: one per output of its forward."""
    metadata = getattr(node, '_input_metadata', None)
    return max(1, len(metadata)) if metadata is not None else 1
