"""tools/inference.py and tools/visualize_quadtree.py on folders with bad and unusual files:
every usable image gets its output, every other file one line that says why, and the run
goes on."""
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from quadmamba_mm.runtime.images import UnreadableImage, list_images, read_image
from quadmamba_mm.runtime.toolbox import build_model

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / 'configs' / 'demo'
TINY_ARCH = 'dict(_delete_=True, embed_dims=8, depths=(1, 1, 1, 1), ssm_ratio=1.0)'
TINY = {
    'mmdet': ('mask-rcnn_quadmamba-li_fpn_shapes.py', f'''
model = dict(
    backbone=dict(arch={TINY_ARCH}),
    neck=dict(in_channels=[8, 16, 32, 64], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=16),
                  bbox_head=dict(in_channels=16, fc_out_channels=32),
                  mask_roi_extractor=dict(out_channels=16),
                  mask_head=dict(in_channels=16, conv_out_channels=16)),
    test_cfg=dict(rpn=dict(nms_pre=50, max_per_img=50), rcnn=dict(max_per_img=3)))
'''),
    'mmseg': ('upernet_quadmamba-li_shapes-128x128.py', f'''
model = dict(backbone=dict(arch={TINY_ARCH}),
             decode_head=dict(in_channels=[8, 16, 32, 64], channels=16),
             auxiliary_head=dict(in_channels=32, channels=16))
'''),
    'mmpretrain': ('quadmamba-li_shapes.py', f'''
model = dict(backbone=dict(arch={TINY_ARCH}), head=dict(in_channels=64))
'''),
}


def photo(height, width, seed):
    """A natural-looking picture: smooth colour gradients, sensor-like noise and an object."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, phase = rng.uniform(-1, 1, 3)
        image[..., c] = 128 + 80 * np.sin(3 * (a * x / width + b * y / height) + phase)
    image += rng.normal(0, 8, image.shape)
    cv2.circle(image, (width // 3, height // 2), max(2, min(height, width) // 5),
               (40, 180, 220), -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def encoded(image, suffix='.png'):
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


def save_pil(array, path, mode=None, **kwargs):
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path, **kwargs)
    return path


@pytest.fixture(scope='module')
def odd_modes(tmp_path_factory):
    """Usable images in modes other than 8-bit RGB; the model input must be 8-bit BGR."""
    folder = tmp_path_factory.mktemp('odd_modes')
    rgb = photo(96, 128, 5)[..., ::-1].copy()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise for display
    return [
        save_pil(rgb[..., 0], folder / 'f_gray.png'),
        save_pil(rgba, folder / 'g_rgba.png'),
        save_pil(rgb, folder / 'h_cmyk.jpg', 'CMYK'),
        save_pil(rgb[..., 1].astype(np.uint16) * 257, folder / 'i_16bit.png'),
        save_pil(rgb, folder / 'j_palette.png', 'P'),
        save_pil(rgb[..., 2] > 128, folder / 'k_1bit.png'),
        save_pil(rgb, folder / 'l_rotated.jpg', exif=exif),
    ]


@pytest.fixture(scope='module')
def mixed_folder(tmp_path_factory, odd_modes):
    """Bad files sorted before three good photos, then the unusual modes and a tiny image."""
    folder = tmp_path_factory.mktemp('photos')
    (folder / '0_empty.jpg').write_bytes(b'')
    (folder / 'a_notes.png').write_text('shopping list: milk, eggs\n')
    full = encoded(photo(96, 128, 1))
    (folder / 'b_cut.png').write_bytes(full[:len(full) // 2])
    cv2.imwrite(str(folder / 'c_photo.jpg'), photo(96, 128, 2))
    cv2.imwrite(str(folder / 'd_photo.png'), photo(128, 96, 3))
    cv2.imwrite(str(folder / 'e_photo.jpg'), photo(96, 128, 4))
    for path in odd_modes:
        (folder / path.name).write_bytes(path.read_bytes())
    cv2.imwrite(str(folder / 'm_tiny.png'), photo(10, 12, 6))
    save_pil(np.ones((20, 20), np.float32), folder / 'n_float.tif')
    return folder


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    """Config and freshly initialised checkpoint of a small model, per toolbox."""
    folder = tmp_path_factory.mktemp('models')
    made = {}

    def make(toolbox):
        if toolbox in made:
            return made[toolbox]
        base, body = TINY[toolbox]
        config = folder / f'tiny_{toolbox}.py'
        config.write_text(f'_base_ = [{str(DEMO / base)!r}]\n{body}')
        cfg = Config.fromfile(config)
        # Classes and palette as a training run would save them.
        meta = dict(cfg.get('metainfo') or dict(classes=['circle', 'square', 'triangle']))
        checkpoint = folder / f'tiny_{toolbox}.pth'
        torch.save(dict(state_dict=build_model(cfg).state_dict(),
                        meta=dict(dataset_meta=meta)), checkpoint)
        made[toolbox] = config, checkpoint
        return made[toolbox]
    return make


def run_in_process(capsys, *args):
    """Run a tool in this process (its imports are already paid for): exit status and output."""
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = [str(a) for a in args]
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(ROOT / args[0]), run_name='__main__')
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    return status, out.out, out.out + out.err


def run_tool(*args):
    # One thread: with models this small, more threads only wait for each other (about 10x
    # slower on a busy 2-core machine).
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                            cwd=ROOT, timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    return result, result.stdout + result.stderr


def test_reading_converts_every_mode_as_the_toolboxes_loader(odd_modes, tmp_path):
    for path in odd_modes:
        image = read_image(path)
        # What the toolboxes' LoadImageFromFile (OpenCV, IMREAD_COLOR) gives for the file.
        expected = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image.dtype == np.uint8 and image.shape == expected.shape, path.name
        tolerance = 1 if 'cmyk' in path.name else 0  # rounding of the CMYK conversion
        assert np.abs(image.astype(int) - expected).max() <= tolerance, path.name
    assert read_image(odd_modes[-1]).shape == (128, 96, 3)  # EXIF orientation applied

    large = tmp_path / 'large.jpg'
    cv2.imwrite(str(large), cv2.resize(photo(400, 600, 7), (6000, 4000)))
    assert read_image(large).shape == (4000, 6000, 3)
    tiny = tmp_path / 'tiny.png'
    cv2.imwrite(str(tiny), photo(10, 12, 8))
    assert read_image(tiny).shape == (10, 12, 3)
    wide = tmp_path / 'rgb16.png'
    cv2.imwrite(str(wide), photo(20, 30, 9).astype(np.uint16) * 257)
    assert np.array_equal(read_image(wide), cv2.imread(str(wide)))


@pytest.mark.parametrize('name, content, reason', [
    ('empty.png', b'', 'not an image: the file is empty'),
    ('notes.jpg', b'Dear diary, today', "not an image: the content (17 bytes, starting b'Dear"),
    ('cut.png', encoded(photo(64, 64, 1))[:600], 'truncated image'),
    ('cut.jpg', encoded(photo(64, 64, 1), '.jpg')[:900], 'truncated image'),
])
def test_unreadable_files_raise_with_a_reason(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UnreadableImage, match='^' + re.escape(reason)):
        read_image(tmp_path / name)


def test_unsupported_modes_are_named(tmp_path):
    save_pil(np.ones((8, 8), np.float32), tmp_path / 'float.tif')
    with pytest.raises(UnreadableImage, match='unsupported image mode F'):
        read_image(tmp_path / 'float.tif')
    save_pil(np.full((8, 8), 100000, np.int32), tmp_path / 'int32.tif')
    with pytest.raises(UnreadableImage, match='unsupported image mode I: 32-bit samples'):
        read_image(tmp_path / 'int32.tif')


def test_listing(tmp_path):
    (tmp_path / 'b.PNG').write_bytes(b'')
    (tmp_path / 'a.jpg').write_bytes(b'')
    (tmp_path / 'notes.txt').write_text('')
    (tmp_path / 'folder.png').mkdir()
    assert [p.name for p in list_images(tmp_path)] == ['a.jpg', 'b.PNG']
    assert list_images(tmp_path / 'notes.txt') == [tmp_path / 'notes.txt']
    with pytest.raises(FileNotFoundError, match='does not exist'):
        list_images(tmp_path / 'missing')
    with pytest.raises(ValueError, match='expected image files'):
        list_images(tmp_path / 'folder.png')


def test_detection_on_a_mixed_folder(mixed_folder, tiny_model, tmp_path):
    config, checkpoint = tiny_model('mmdet')
    out = tmp_path / 'out'
    result, log = run_tool('tools/inference.py', config, checkpoint, mixed_folder,
                           '--out-dir', out)
    print(log)
    assert result.returncode == 1, log[-3000:]
    assert 'Traceback' not in log
    bad = {'0_empty.jpg': 'not an image: the file is empty', 'a_notes.png': 'not an image',
           'b_cut.png': 'truncated image', 'n_float.tif': 'unsupported image mode F'}
    for name, reason in bad.items():
        lines = [line for line in log.splitlines() if f'{name}:' in line]
        assert len(lines) == 1 and reason in lines[0], lines
    good = sorted(p.name for p in mixed_folder.iterdir() if p.name not in bad)
    assert len(good) == 11
    assert sorted(p.name for p in (out / 'vis').iterdir()) == good
    assert sorted(p.name for p in (out / 'preds').iterdir()) == sorted(
        f'{Path(name).stem}.json' for name in good)
    assert f'15 images; outputs in {out}; 11 ok, 4 failed' in result.stdout
    # The drawings keep the input's size and colours (the visualizer draws on RGB).
    drawn = cv2.imread(str(out / 'vis' / 'd_photo.png'))
    assert drawn.shape == (128, 96, 3)


@pytest.mark.parametrize('toolbox', ['mmseg', 'mmpretrain'])
def test_a_failure_inside_the_model_does_not_stop_the_run(toolbox, tiny_model, tmp_path, capsys):
    """These configs feed the image unresized: a 12x10 image is below the backbone's 32x32
    minimum and fails inside the model; the images around it still get their outputs."""
    folder = tmp_path / 'photos'
    folder.mkdir()
    (folder / 'a_notes.png').write_text('not an image')
    cv2.imwrite(str(folder / 'b_photo.jpg'), photo(96, 128, 1))
    cv2.imwrite(str(folder / 'c_tiny.png'), photo(10, 12, 2))
    save_pil(photo(64, 64, 3)[..., 0], folder / 'd_gray.png')
    config, checkpoint = tiny_model(toolbox)
    out = tmp_path / 'out'
    status, stdout, log = run_in_process(capsys, 'tools/inference.py', config, checkpoint, folder,
                                         '--out-dir', out)
    print(log)
    assert status == 1 and 'Traceback' not in log, log[-3000:]
    tiny = [line for line in log.splitlines() if 'c_tiny.png:' in line]
    assert len(tiny) == 1 and 'failed (12x10 pixels' in tiny[0] and 'below the minimum' in tiny[0]
    assert sorted(p.name for p in (out / 'vis').iterdir()) == ['b_photo.jpg', 'd_gray.png']
    if toolbox == 'mmseg':
        assert sorted(p.name for p in (out / 'preds').iterdir()) == ['b_photo.png', 'd_gray.png']
        labels = cv2.imread(str(out / 'preds' / 'b_photo.png'), cv2.IMREAD_UNCHANGED)
        assert labels.shape == (96, 128) and labels.max() < 4
    assert f'4 images; outputs in {out}; 2 ok, 2 failed' in stdout


def test_visualize_quadtree_on_a_mixed_folder(tiny_model, tmp_path, capsys):
    folder = tmp_path / 'photos'
    folder.mkdir()
    (folder / 'a_cut.png').write_bytes(encoded(photo(64, 64, 1))[:500])
    cv2.imwrite(str(folder / 'b_photo.jpg'), photo(96, 128, 1))
    cv2.imwrite(str(folder / 'c_tiny.png'), photo(10, 12, 2))
    cv2.imwrite(str(folder / 'd_large.jpg'), cv2.resize(photo(200, 300, 3), (3000, 2000)))
    config, checkpoint = tiny_model('mmdet')
    status, _, log = run_in_process(capsys, 'tools/visualize_quadtree.py', config, checkpoint,
                                    folder, '--out-dir', tmp_path / 'out', '--max-side', '150')
    print(log)
    assert status == 1 and 'Traceback' not in log, log[-3000:]
    assert 'a_cut.png: skipped, truncated image' in log
    assert 'c_tiny.png: failed (12x10 pixels' in log
    assert 'd_large.jpg: 2 quadtree blocks' in log and 'scaled from 3000x2000 to 150x100' in log
    # The input plus one panel per quadtree block (the tiny model: 2 stages x 1 block).
    assert cv2.imread(str(tmp_path / 'out' / 'b_photo_quadtree.png')).shape == (96, 128 * 3, 3)
    assert cv2.imread(str(tmp_path / 'out' / 'd_large_quadtree.png')).shape == (100, 150 * 3, 3)
    assert '4 images; outputs in' in log and '2 ok, 2 failed' in log
