"""Run a trained model on images of any size and draw its predictions.

Usage:
    python tools/infer.py IMAGE_OR_FOLDER CONFIG CHECKPOINT [--out-dir DIR] [--device cpu]
                          [--score-thr 0.3] [--topk 5]

For detection, segmentation and classification configs alike: the config's
``default_scope`` picks the toolbox's inferencer (mmdet's ``DetInferencer``,
mmseg's ``MMSegInferencer``, mmpretrain's ``ImageClassificationInferencer``),
whose visualizer draws the instances' masks, boxes, classes and scores, the
class map, or the top-5 classes. The config's test pipeline resizes each image
for the model; the drawing keeps the image's size (classification drawings of
small images are enlarged so that the text fits). Writes ``DIR/<image
name>.png`` per image and prints what was found.
"""
import argparse
import os.path as osp
import sys
from pathlib import Path
from typing import List, Optional, Sequence

# The repository root, so that configs can import 'projects.<name>' modules
# through custom_imports wherever the command is run from.
sys.path.insert(0, osp.dirname(osp.dirname(osp.realpath(__file__))))
from mmsape.apis import build_inferencer, predict_and_draw  # noqa: E402

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Draw a model\'s predictions on images')
    parser.add_argument('inputs', help='an image file, or a folder of images')
    parser.add_argument('config', help='the model\'s config file')
    parser.add_argument('checkpoint', help='the trained weights')
    parser.add_argument('--out-dir', default='outputs', help='where the drawings go')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw the instances scored above this')
    parser.add_argument('--topk', type=int, default=5,
                        help='classification: how many classes to show')
    return parser.parse_args(argv)


def image_files(path: Path) -> List[Path]:
    """``[path]`` for an image file, a folder's image files (sorted) otherwise."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SystemExit(f'{path} is neither an image file nor a folder')
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f'{path} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    stems = [p.stem for p in files]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise SystemExit(f'{path}: images {repeated} differ only in their suffix and would '
                         'be drawn to the same file; infer them one by one')
    return files


def describe(prediction, classes: Optional[Sequence[str]], score_thr: float,
             topk: int) -> str:
    """One line on what a prediction holds."""

    def name(label: int) -> str:
        return classes[label] if classes else str(label)

    if 'pred_instances' in prediction:
        instances = prediction.pred_instances
        # those drawn: mmdet's visualizer keeps the scores above the threshold
        kept = instances[instances.scores > score_thr]
        found = ', '.join(f'{name(int(label))} {float(score):.2f}'
                          for label, score in zip(kept.labels, kept.scores))
        return f'{len(kept)} instances scored above {score_thr}' + (f': {found}' if found else '')
    if 'pred_sem_seg' in prediction:
        label_map = prediction.pred_sem_seg.data.flatten()
        counts = label_map.bincount()
        shares = sorted(((int(count) / label_map.numel(), label)
                         for label, count in enumerate(counts) if count), reverse=True)
        return 'pixels: ' + ', '.join(f'{name(label)} {share:.0%}' for share, label in shares)
    scores = prediction.pred_score
    top = scores.topk(min(topk, scores.numel()))
    return 'top classes: ' + ', '.join(
        f'{name(int(label))} {float(score):.2f}' for score, label in zip(*top))


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    args = parse_args(argv)
    images = image_files(Path(args.inputs))
    inferencer = build_inferencer(args.config, args.checkpoint, device=args.device)
    classes = (getattr(inferencer, 'classes', None)
               or (getattr(inferencer.model, 'dataset_meta', None) or {}).get('classes'))
    drawings = []
    for image in images:
        out_file = Path(args.out_dir) / f'{image.stem}.png'
        prediction = predict_and_draw(inferencer, str(image), str(out_file),
                                      pred_score_thr=args.score_thr, topk=args.topk)
        summary = describe(prediction, classes, args.score_thr, args.topk)
        print(f'{image} -> {out_file}\n  {summary}')
        drawings.append(out_file)
    return drawings


if __name__ == '__main__':
    main()
