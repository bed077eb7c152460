"""The installed stack: pinned versions, mmcv's compiled ops, one cv2 provider."""
from quadmamba_mm.runtime.env_check import find_problems, pinned_requirements


def test_environment_has_the_pinned_stack_with_mmcv_ops():
    assert find_problems() == []


def test_pins_come_from_setup_cfg():
    pins = {req.name: str(req.specifier) for req in pinned_requirements()}
    assert pins == {'mmengine': '==0.10.7', 'mmcv': '==2.1.0', 'mmdet': '==3.3.0',
                    'mmsegmentation': '==1.2.2', 'mmpretrain': '==1.2.0'}


def test_mmcv_ops_run_on_the_cpu():
    from quadmamba_mm.runtime.env_check import check_mmcv_ops
    assert check_mmcv_ops('cpu') == []


def test_mmcv_built_without_cuda_ops_is_named(monkeypatch):
    """The message a GPU user sees when mmcv's CUDA ops are missing names the cause."""
    import mmcv.ops

    from quadmamba_mm.runtime.env_check import check_mmcv_ops

    def missing(*args, **kwargs):
        raise RuntimeError('nms_impl: implementation for device cuda:0 not found.')

    monkeypatch.setattr(mmcv.ops, 'nms', missing)
    problems = check_mmcv_ops('cpu')
    assert len(problems) == 1 and 'Rebuild mmcv with MMCV_WITH_OPS=1' in problems[0]
    problems = check_mmcv_ops('meta')
    assert len(problems) == 1 and 'built without its CUDA ops' in problems[0]
