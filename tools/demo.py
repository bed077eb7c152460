"""The main job on the embedded data (`make demo`), sized for a 2-core CPU.

1. Generate the shapes datasets (COCO instances, ADE20K-style, ImageNet-style) in data/demo.
2. Evaluate Mask R-CNN with QuadMamba-Li, untrained: the COCO bbox/segm mAP to beat.
3. Train it from scratch (configs/demo/mask-rcnn_quadmamba-li_fpn_shapes.py), with progress.
4. Evaluate it again, then save detections and the learned quadtree partitions of a few
   validation images under work_dirs/demo/vis, and a summary in work_dirs/demo/summary.json.
"""
import argparse
import copy
import json
import time
from pathlib import Path

import cv2
from mmengine.config import Config
from mmengine.runner import Runner

from quadmamba_mm.runtime.quiet import quiet_tools
from quadmamba_mm.datasets import make_all
from quadmamba_mm.engine.guards import add_training_guards
from quadmamba_mm.visualization import (backbone_input, draw_all_partitions,
                                        quadtree_partitions)

CONFIG = 'configs/demo/mask-rcnn_quadmamba-li_fpn_shapes.py'
METRICS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50')


def runner_for(cfg: Config, work_dir: Path) -> Runner:
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = str(work_dir)
    add_training_guards(cfg)  # as tools/train.py: bad samples skipped, non-finite losses stop
    return Runner.from_cfg(cfg)


def visualize(runner: Runner, data_root: Path, out_dir: Path, count: int = 4) -> None:
    from mmdet.apis import DetInferencer
    images = sorted((data_root / 'val').glob('*.png'))[:count]
    checkpoint = Path(runner.work_dir) / 'last_checkpoint'
    inferencer = DetInferencer(model=CONFIG, weights=checkpoint.read_text().strip(),
                               device='cpu', show_progress=False)
    inferencer([str(p) for p in images], out_dir=str(out_dir), no_save_pred=True)
    preprocessor = runner.cfg.model.data_preprocessor
    for path in images:
        image = cv2.imread(str(path))
        records = quadtree_partitions(runner.model.backbone, backbone_input(image, preprocessor))
        cv2.imwrite(str(out_dir / f'{path.stem}_quadtree.png'), draw_all_partitions(image, records))


def main():
    quiet_tools()  # no pkg_resources warnings, no torch build dump
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo', type=Path)
    parser.add_argument('--data', default='data/demo', type=Path)
    parser.add_argument('--epochs', type=int, default=None, help='override the training length')
    args = parser.parse_args()
    start = time.time()

    print(f'[demo] 1/4 generating the shapes datasets in {args.data}')
    make_all(args.data)
    cfg = Config.fromfile(CONFIG)
    cfg.train_dataloader.dataset.data_root = cfg.val_dataloader.dataset.data_root = \
        f'{args.data}/coco/'
    cfg.val_evaluator.ann_file = f'{args.data}/coco/annotations/instances_val.json'
    cfg.test_dataloader, cfg.test_evaluator = cfg.val_dataloader, cfg.val_evaluator
    if args.epochs:
        cfg.train_cfg.max_epochs = cfg.train_cfg.val_interval = args.epochs

    print('[demo] 2/4 evaluating the untrained model')
    untrained = runner_for(cfg, args.work_dir / 'untrained').test()
    print(f'[demo] 3/4 training for {cfg.train_cfg.max_epochs} epochs '
          f'(progress every {cfg.default_hooks.logger.interval} iterations)')
    runner = runner_for(cfg, args.work_dir)
    runner.train()
    trained = runner.test()

    print('[demo] 4/4 saving detections and quadtree partitions')
    vis_dir = args.work_dir / 'vis'
    vis_dir.mkdir(parents=True, exist_ok=True)
    visualize(runner, args.data / 'coco', vis_dir)

    summary = dict(config=CONFIG, wall_time_s=round(time.time() - start, 1),
                   untrained={k: untrained.get(k) for k in METRICS},
                   trained={k: trained.get(k) for k in METRICS})
    (args.work_dir / 'summary.json').write_text(json.dumps(summary, indent=2))
    print(f'\n[demo] {"metric":18s} {"untrained":>10s} {"trained":>10s}')
    for key in METRICS:
        print(f'[demo] {key:18s} {untrained.get(key, float("nan")):10.3f} '
              f'{trained.get(key, float("nan")):10.3f}')
    print(f'[demo] done in {summary["wall_time_s"]:.0f} s; visualizations in {vis_dir}, '
          f'summary in {args.work_dir / "summary.json"}')


if __name__ == '__main__':
    main()
