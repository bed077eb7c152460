"""Training data that survives unusable samples: each one is skipped, named and counted.

Without this, one unreadable image stops a training run: mmcv's ``LoadImageFromFile`` raises
(``failed to load image``) for a missing, empty, truncated or corrupt file, mmseg's
``LoadAnnotations`` for a missing segmentation map, and a COCO annotation entry with a
malformed box stops the dataset from loading at all, without naming the entry.

:class:`SkipBadSamples` wraps a dataset (registered for every toolbox; ``tools/train.py``
wraps the training datasets of every config, see :func:`skip_bad_training_samples`):

- an exception in one of its *loading* transforms (every transform whose class name starts
  with ``Load``: images, annotations, segmentation maps, proposals) makes the sample be
  skipped: the transform gives ``None``, and mmengine's ``BaseDataset.__getitem__`` then
  draws another sample (``max_refetch``). Exceptions in the other transforms
  (augmentations) are not data errors and still stop training;
- an annotation entry that cannot be parsed while the dataset loads (``parse_data_info``)
  drops that image, naming the file and, for COCO-style annotations, the annotation id.

Each skip gives one ``BadSampleWarning`` with the file and the reason (read again with
:func:`quadmamba_mm.runtime.images.read_image` to say *why*: missing, empty, truncated,
not an image) and one record in a file that the wrapper's processes append to, the
DataLoader workers included. :class:`quadmamba_mm.engine.BadSampleHook` reads the records in
the training process, sums them up at the end of every epoch and stops training past a share
of the data (default 1%).
"""
import contextlib
import copy
import json
import os
import os.path as osp
import tempfile
import warnings
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from mmengine.dataset import BaseDataset
from mmengine.registry import DATASETS

from ..runtime.images import UnreadableImage, one_line, read_image

# Keys of a sample's results dict that name files, in the order the loaders read them.
FILE_KEYS = ('img_path', 'seg_map_path')


class BadSampleWarning(UserWarning):
    """An unusable training sample was skipped."""


# One warning per file and reason in each process, whatever the warning filters of the run.
warnings.simplefilter('default', BadSampleWarning)


class SkipRecords:
    """The records of skipped samples: JSON lines appended to one file by every process that
    holds the dataset (one ``os.write`` each, so concurrent DataLoader workers do not
    interleave), read by the training process.

    Args:
        path: the file. Default: a new temporary file, removed when the object that created
            it is collected or its process exits (``BadSampleHook`` removes it after the run).
    """

    def __init__(self, path: Optional[str] = None) -> None:
        if path is None:
            fd, path = tempfile.mkstemp(prefix='quadmamba_bad_samples_', suffix='.jsonl')
            os.close(fd)
            # Only in this process: a DataLoader worker forked from it inherits the finalizer.
            self._cleanup = weakref.finalize(self, _remove_in, os.getpid(), path)
        self.path = path

    def __getstate__(self) -> dict:
        return {'path': self.path}  # the copy in a DataLoader worker does not remove the file

    def __setstate__(self, state: dict) -> None:
        self.path = state['path']

    def add(self, stage: str, sample: str, reason: str) -> None:
        """Record a skipped sample and warn about it.

        Args:
            stage: ``'load'`` (dropped while the annotations were read) or ``'fetch'``
                (skipped when the DataLoader asked for it).
            sample: the file (or annotation entry) that was skipped.
            reason: why, in one line.
        """
        line = json.dumps(dict(stage=stage, sample=sample, reason=reason)) + '\n'
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        action = ('dropped it from the training set' if stage == 'load' else
                  'skipped it; another sample is drawn')
        warnings.warn(f'{sample}: {reason} ({action})', BadSampleWarning, stacklevel=2)

    def remove(self) -> None:
        """Remove the file (nothing is recorded any more)."""
        _remove(self.path)

    def read(self, offset: int = 0) -> Tuple[List[dict], int]:
        """The records from byte ``offset`` on, and the offset after them. A record still
        being written (no line end yet) is left for the next call."""
        try:
            with open(self.path, 'rb') as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        complete = data.rfind(b'\n') + 1
        lines = data[:complete].decode().splitlines()
        return [json.loads(line) for line in lines if line], offset + complete


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _remove_in(pid: int, path: str) -> None:
    if os.getpid() == pid:
        _remove(path)


def why_unusable(results: dict, error: Optional[BaseException]) -> Tuple[str, str]:
    """The file a failed loading transform was reading and why it failed, in one line.

    Every local file of the sample is read again, so that the reason says what is wrong with
    it (missing, empty, truncated, not an image) rather than repeating the loader's
    ``failed to load image``. Where every file reads well, the loader's own error is the
    reason (a broken polygon, a wrong label map).
    """
    named = [(key, results[key]) for key in FILE_KEYS if isinstance(results.get(key), str)]
    for key, path in named:
        if '://' in path:  # another storage backend: the loader's error says it best
            continue
        try:
            read_image(path)
        except UnreadableImage as unreadable:
            what = 'segmentation map' if key == 'seg_map_path' else 'image'
            return path, f'unusable {what}: {unreadable}'
    sample = named[0][1] if named else repr({k: v for k, v in results.items()
                                             if isinstance(v, (str, int))})
    if error is None:
        return sample, 'a loading transform gave no data'
    return sample, f'{type(error).__name__}: {one_line(error)}'


class SkipIfUnusable:
    """A loading transform that gives ``None`` for a sample it cannot load, after recording
    it, instead of raising. Not registered: :class:`SkipBadSamples` puts it around the
    loading transforms of the dataset it wraps.

    Args:
        transform: the loading transform.
        records: where skipped samples are recorded.
    """

    def __init__(self, transform: Callable, records: SkipRecords) -> None:
        self.transform = transform
        self.records = records

    def __call__(self, results: dict) -> Optional[dict]:
        try:
            out = self.transform(results)
        except Exception as error:  # noqa: B902 - any loader failure is this sample's
            self.records.add('fetch', *why_unusable(results, error))
            return None
        if out is None:  # e.g. LoadImageFromFile(ignore_empty=True): skipped, but not silently
            self.records.add('fetch', *why_unusable(results, None))
        return out

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.transform!r})'


def is_loading_transform(transform: Any) -> bool:
    """Whether a pipeline step reads the sample's files: its class name starts with
    ``Load`` (LoadImageFromFile, LoadAnnotations, LoadPanopticAnnotations, ...)."""
    return type(transform).__name__.startswith('Load')


def _entry_name(raw: Any) -> str:
    """A name for a raw annotation entry: its file, else its id."""
    if isinstance(raw, dict):
        for source in (raw.get('raw_img_info'), raw):
            if isinstance(source, dict):
                for key in ('file_name', 'img_path', 'filename', 'img'):
                    if isinstance(source.get(key), str):
                        return source[key]
                for key in ('img_id', 'id'):
                    if key in source:
                        return f'image id {source[key]}'
    return one_line(ValueError(repr(raw)[:200]))


@DATASETS.register_module()
class SkipBadSamples:
    """A dataset whose unusable samples are skipped, each named in a warning and recorded.

    Everything else (length, ``metainfo``, ``get_data_info``, ``get_cat_ids``, ...) is the
    wrapped dataset's.

    Args:
        dataset: the dataset, or its config. A config is built with ``lazy_init=True`` so
            that the annotation entries are read under the guard.
        lazy_init: do not read the annotations yet (``full_init`` does). Default: False.
        report_file: the file the skipped samples are recorded in. Default: a temporary file.
    """

    def __init__(self, dataset: Union[dict, BaseDataset], lazy_init: bool = False,
                 report_file: Optional[str] = None) -> None:
        if isinstance(dataset, dict):
            dataset = copy.deepcopy(dataset)
            dataset_type = dataset.get('type')
            if isinstance(dataset_type, str):  # in the run's scope, as DATASETS.build finds it
                with DATASETS.switch_scope_and_registry(None) as registry:
                    dataset_type = registry.get(dataset_type)
            if isinstance(dataset_type, type) and issubclass(dataset_type, BaseDataset):
                dataset['lazy_init'] = True
            dataset = DATASETS.build(dataset)
        self.dataset = dataset
        self.records = SkipRecords(report_file)
        pipeline = getattr(dataset, 'pipeline', None)
        transforms = getattr(pipeline, 'transforms', None)
        if not isinstance(transforms, list):
            raise TypeError(f'SkipBadSamples expects a dataset with a pipeline of transforms '
                            f'(mmengine BaseDataset), got {type(dataset).__name__}')
        for i, transform in enumerate(transforms):
            if is_loading_transform(transform):
                transforms[i] = SkipIfUnusable(transform, self.records)
        if not lazy_init:
            self.full_init()

    def full_init(self) -> None:
        """Read the annotations (if not done yet); an entry that cannot be parsed drops its
        image, with a warning and a record."""
        if getattr(self.dataset, '_fully_initialized', False):
            return
        with self._guarded_parsing():
            self.dataset.full_init()

    @contextlib.contextmanager
    def _guarded_parsing(self) -> Iterator[None]:
        """``parse_data_info`` and ``load_data_list`` of the wrapped dataset, for the time of
        one ``full_init``: a broken entry is recorded and dropped. Instance attributes only
        (removed afterwards), so the dataset stays picklable for the DataLoader workers."""
        dataset = self.dataset
        parse = type(dataset).parse_data_info
        load = type(dataset).load_data_list
        records = self.records
        dropped: List[Any] = []

        def guarded_parse(raw: dict) -> Union[dict, List[dict]]:
            try:
                return parse(dataset, raw)
            except Exception as error:  # noqa: B902 - any parse failure is this entry's
                records.add('load', *self._broken_entry(parse, raw, error))
                marker: List[dict] = []  # BaseDataset accepts an empty list: no sample
                dropped.append(marker)
                return marker

        def guarded_load() -> List[dict]:
            # CocoDataset appends whatever parse_data_info gives: take the markers out.
            return [info for info in load(dataset)
                    if not any(info is marker for marker in dropped)]

        dataset.parse_data_info = guarded_parse
        dataset.load_data_list = guarded_load
        try:
            yield
        finally:
            del dataset.parse_data_info, dataset.load_data_list

    def _broken_entry(self, parse: Callable, raw: Any,
                      error: BaseException) -> Tuple[str, str]:
        """The image of a broken entry and the reason; for COCO-style entries (an image with
        its annotations), the first annotation that fails on its own is named by id."""
        name = _entry_name(raw)
        prefix = getattr(self.dataset, 'data_prefix', None) or {}
        folder = prefix.get('img', prefix.get('img_path')) if isinstance(prefix, dict) else None
        if isinstance(folder, str) and not name.startswith('image id ') and not osp.isabs(name):
            name = osp.join(folder, name)  # the file, as the loader would open it
        reason = f'{type(error).__name__}: {one_line(error)}'
        if isinstance(raw, dict) and isinstance(raw.get('raw_ann_info'), list):
            for ann in raw['raw_ann_info']:
                try:
                    parse(self.dataset, dict(raw, raw_ann_info=[ann]))
                except Exception as single:  # noqa: B902
                    ann_id = ann.get('id', '?') if isinstance(ann, dict) else '?'
                    return name, (f'broken annotation entry (id {ann_id}): '
                                  f'{type(single).__name__}: {one_line(single)}')
        return name, f'broken annotation entry: {reason}'

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        return self.dataset[idx]

    def __getattr__(self, name: str) -> Any:
        # Only called for what this wrapper lacks; 'dataset' itself is looked up before it
        # is set while unpickling in a DataLoader worker.
        if name.startswith('__') or name in ('dataset', 'records'):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.dataset!r})'


def find_skipping_datasets(dataset: Any) -> List[SkipBadSamples]:
    """Every :class:`SkipBadSamples` in a built dataset and the wrappers around it
    (``.dataset``, ``.datasets``)."""
    found, stack, seen = [], [dataset], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, SkipBadSamples):
            found.append(item)
            stack.append(item.dataset)
            continue
        inner = getattr(item, 'datasets', None)
        stack.extend(inner if isinstance(inner, (list, tuple)) else [])
        if hasattr(item, 'dataset'):
            stack.append(item.dataset)
    return found


def skip_bad_samples_in(dataset_cfg: Dict) -> Dict:
    """A dataset config with every dataset that has a pipeline wrapped in
    :class:`SkipBadSamples` (wrappers such as ``RepeatDataset``, ``ConcatDataset`` or
    ``ClassBalancedDataset`` keep their place, the datasets inside are wrapped)."""
    if not isinstance(dataset_cfg, dict) or dataset_cfg.get('type') in (
            'SkipBadSamples', 'quadmamba_mm.SkipBadSamples', SkipBadSamples):
        return dataset_cfg
    out = copy.copy(dataset_cfg)
    if isinstance(out.get('datasets'), (list, tuple)):
        out['datasets'] = [skip_bad_samples_in(d) for d in out['datasets']]
        return out
    if isinstance(out.get('dataset'), dict):
        out['dataset'] = skip_bad_samples_in(out['dataset'])
        return out
    if 'pipeline' in out:
        return dict(type='SkipBadSamples', dataset=out)
    return out
