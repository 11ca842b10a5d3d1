"""Generate mmsape's synthetic demo datasets (ImageNet / COCO / ADE20K layouts).

Example::

    python tools/misc/generate_demo_data.py --out data/demo
    python tools/misc/generate_demo_data.py --out data/demo --seed 1 \\
        --num-train 480 --num-val 160 --force

Without ``--force`` nothing is written when ``<out>`` already holds demo data
of this generator version, seed and size. See :mod:`mmsape.testing.demo_data`
for what the datasets contain and how configs load them.
"""
import argparse
import sys
import time
from pathlib import Path

try:
    from mmsape.testing import demo_data
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from mmsape.testing import demo_data


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/demo', help='output directory')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--num-train', type=int, default=demo_data.DEFAULT_NUM_TRAIN,
                        help='training images per task')
    parser.add_argument('--num-val', type=int, default=demo_data.DEFAULT_NUM_VAL,
                        help='validation images per task')
    parser.add_argument(
        '--force', action='store_true',
        help='regenerate even if up to date, and replace imagenet/ coco/ ade/ under '
        '--out even when they were not written by this generator')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    if not args.force and demo_data.is_demo_data_current(out, args.seed, args.num_train,
                                                         args.num_val):
        print(f'{out}: demo data up to date (seed {args.seed}, '
              f'{args.num_train} train / {args.num_val} val per task); --force regenerates')
        return 0
    start = time.perf_counter()
    try:
        if args.force:
            demo_data.generate_demo_data(out, args.seed, args.num_train, args.num_val,
                                         force=True)
        else:
            demo_data.ensure_demo_data(out, args.seed, args.num_train, args.num_val)
    except (FileExistsError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    manifest = demo_data.read_demo_manifest(out) or {}
    print(f'{out}: wrote demo data in {time.perf_counter() - start:.1f} s '
          f'(seed {args.seed}, {args.num_train} train / {args.num_val} val per task)')
    for task, stats in manifest.get('tasks', {}).items():
        print(f'  {task}: {len(stats["classes"])} classes {tuple(stats["classes"])}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
