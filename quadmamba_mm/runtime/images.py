"""Reading images for the tools: every file is decoded once and completely, then converted to
the 8-bit BGR array the OpenMMLab pipelines work on; a file that cannot be used raises
``UnreadableImage`` with a one-line reason instead of failing later inside a model.

Conversions follow what the toolboxes' ``LoadImageFromFile`` (OpenCV, ``IMREAD_COLOR``) does
with the same file, so a model sees the same pixels as in ``tools/test.py``:

* grayscale, 1-bit and palette images are expanded to three channels;
* an alpha channel is dropped (not composited);
* 16-bit samples keep their top 8 bits;
* CMYK and YCbCr are converted to RGB;
* the EXIF orientation is applied.

Samples in 32-bit integers beyond the 16-bit range, floating-point samples and modes Pillow
cannot convert to RGB are refused with the mode named.
"""
import sys
from pathlib import Path
from typing import Callable, List, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.ppm', '.pgm')

PathLike = Union[str, Path]


class UnreadableImage(Exception):
    """A file that is not a usable image; the message says why, in one line."""


def list_images(paths: Union[PathLike, List[PathLike]]) -> List[Path]:
    """The image files named by ``paths``: a file is taken as it is (whatever its suffix); a
    folder gives its files with an image suffix, sorted by name (not recursive).

    Raises ``FileNotFoundError`` for a path that does not exist and ``ValueError`` for a
    folder with no image files, each with a message for the user.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    images = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            if not found:
                raise ValueError(f'expected image files ({", ".join(IMAGE_SUFFIXES)}) in the '
                                 f'folder {path}, found none')
            images += found
        elif path.exists():
            images.append(path)
        else:
            raise FileNotFoundError(f'expected an image file or a folder, but {path} does not '
                                    'exist')
    return images


def read_image(path: PathLike) -> np.ndarray:
    """The image at ``path`` as an ``(H, W, 3)`` uint8 BGR array (the OpenCV/mmcv order).

    The whole file is decoded here, so a truncated or corrupt file fails now, with a reason,
    rather than giving a partly grey image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return _to_bgr(_upright(image))
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage(_not_an_image(path)) from None
    except Image.DecompressionBombError as error:
        raise UnreadableImage(f'too large to decode safely: {one_line(error)}') from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
        raise UnreadableImage(f'cannot open the file: {error.strerror}') from None
    except OSError as error:
        message = one_line(error)
        if 'truncated' in message:
            raise UnreadableImage(f'truncated image: {message}') from None
        raise UnreadableImage(f'corrupt image data: {message}') from None
    except (SyntaxError, ValueError, EOFError, MemoryError) as error:
        # Pillow reports broken chunks and bad headers as SyntaxError or ValueError.
        raise UnreadableImage(f'corrupt image data: {one_line(error)}') from None


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not lose an image whose pixels are fine
        return image


def _to_bgr(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith('I;16') or mode == 'I':
        samples = np.asarray(image)
        if samples.ndim != 2:
            raise UnreadableImage(f'unsupported image mode {mode} with shape {samples.shape}')
        low, high = int(samples.min(initial=0)), int(samples.max(initial=0))
        if low < 0 or high > 65535:
            raise UnreadableImage(f'unsupported image mode {mode}: 32-bit samples from {low} to '
                                  f'{high}; expected 8- or 16-bit samples')
        gray = (samples.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == 'F':
        raise UnreadableImage('unsupported image mode F (32-bit floating-point samples); '
                              'expected 8- or 16-bit samples')
    try:
        rgb = np.asarray(image.convert('RGB'))
    except (ValueError, OSError) as error:
        raise UnreadableImage(f'unsupported image mode {mode}: {one_line(error)}') from None
    return np.ascontiguousarray(rgb[..., ::-1])


def _not_an_image(path: Path) -> str:
    size = path.stat().st_size
    if size == 0:
        return 'not an image: the file is empty (0 bytes)'
    with open(path, 'rb') as f:
        head = f.read(12)
    return (f'not an image: the content ({size} bytes, starting {head!r}) is in no image '
            'format Pillow can read')


def one_line(error: BaseException) -> str:
    """``error``'s message on one line: the tools print one line per file."""
    return ' '.join(str(error).split()) or type(error).__name__


def run_per_image(paths: List[Path], handle: Callable[[Path, np.ndarray], str],
                  out_dir: PathLike) -> int:
    """``handle(path, image) -> summary`` on every readable image, one line each; an
    unreadable file or a failing image costs only that image. Ends with a summary line and
    returns the exit status: 1 if any file failed."""
    failed = 0
    for path in paths:
        try:
            image = read_image(path)
        except UnreadableImage as error:
            print(f'{path}: skipped, {error}', file=sys.stderr, flush=True)
            failed += 1
            continue
        try:
            summary = handle(path, image)
        except Exception as error:  # one image's failure must not cost the others theirs
            print(f'{path}: failed ({image.shape[1]}x{image.shape[0]} pixels, width x height): '
                  f'{type(error).__name__}: {one_line(error)}', file=sys.stderr, flush=True)
            failed += 1
            continue
        print(f'{path}: {summary}', flush=True)
    print(f'{len(paths)} images; outputs in {out_dir}; {len(paths) - failed} ok, '
          f'{failed} failed', flush=True)
    return 1 if failed else 0
