"""The installed stack: pinned versions, mmcv's compiled ops, one cv2 provider."""
from quadmamba_mm.utils.env_check import find_problems, pinned_requirements


def test_environment_has_the_pinned_stack_with_mmcv_ops():
    assert find_problems() == []


def test_pins_come_from_setup_cfg():
    pins = {req.name: str(req.specifier) for req in pinned_requirements()}
    assert pins == {'mmengine': '==0.10.7', 'mmcv': '==2.1.0', 'mmdet': '==3.3.0',
                    'mmsegmentation': '==1.2.2', 'mmpretrain': '==1.2.0'}
