"""Cache segmentation pseudo-labels for SelfDC: ``python -m training.pseudo_labels``.

    python -m training.pseudo_labels --method oneformer \\
        --model shi-labs/oneformer_ade20k_swin_tiny \\
        --images kitti:/data/kitti:train --out /data/cache/oneformer
    python -m training.pseudo_labels --method sam --model facebook/sam-vit-base \\
        --images nyu:/data/nyu --out /data/cache/sam --num-classes 64
    python -m training.pseudo_labels --method felzenszwalb --images DIR --out DIR   # no weights

One uint16 PNG of labels per image (``training.cache`` layout: value = label + 1, 0 = ignore),
``num_classes`` and the source in meta.json; resumable from the manifests; shards by
RANK/WORLD_SIZE (torchrun) or a SLURM array. See ``training.segmenters`` for how class-less
masks become labels.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.cache import segments_path, write_segments
from training.distributed import dist_env, job_device
from training.image_jobs import run_image_job
from training.image_sources import list_images
from training.segmenters import SEGMENT_METHODS, build_segmenter

log = logging.getLogger("training.pseudo_labels")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.pseudo_labels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", required=True, choices=SEGMENT_METHODS)
    parser.add_argument(
        "--images", required=True, help="DIR, kitti:ROOT:SPLIT, nyu:ROOT or bag:PATH"
    )
    parser.add_argument("--out", required=True, type=Path, help="label cache folder")
    parser.add_argument("--model", help="hub name or save_pretrained folder (sam, oneformer)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-images", type=int, help="only the first N images (before sharding)")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=64,
        help="K for sam/felzenszwalb/slic: the K largest segments get labels "
        "0..K-1, the rest -1 (oneformer: the model's classes)",
    )
    sam = parser.add_argument_group("sam")
    sam.add_argument("--points-per-side", type=int, default=32)
    sam.add_argument("--points-per-batch", type=int, default=64)
    sam.add_argument("--pred-iou-thresh", type=float, default=0.88)
    sam.add_argument("--stability-score-thresh", type=float, default=0.95)
    sam.add_argument("--nms-thresh", type=float, default=0.7)
    over = parser.add_argument_group("felzenszwalb / slic (scikit-image)")
    over.add_argument("--scale", type=float, default=200.0, help="felzenszwalb")
    over.add_argument("--min-size", type=int, default=200, help="felzenszwalb, pixels")
    over.add_argument("--sigma", type=float, default=0.8, help="pre-smoothing, both")
    over.add_argument("--n-segments", type=int, help="slic (default: --num-classes)")
    over.add_argument("--compactness", type=float, default=10.0, help="slic")
    return parser.parse_args(argv)


def method_options(args: argparse.Namespace) -> dict:
    if args.method == "sam":
        return {
            "points_per_side": args.points_per_side,
            "points_per_batch": args.points_per_batch,
            "pred_iou_thresh": args.pred_iou_thresh,
            "stability_score_thresh": args.stability_score_thresh,
            "nms_thresh": args.nms_thresh,
        }
    if args.method == "felzenszwalb":
        return {"scale": args.scale, "sigma": args.sigma, "min_size": args.min_size}
    if args.method == "slic":
        return {"n_segments": args.n_segments, "compactness": args.compactness, "sigma": args.sigma}
    return {}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    env = dist_env()
    try:
        source = list_images(args.images)
        device = job_device(args.device, env)
        segmenter = build_segmenter(
            args.method, args.model, device, args.num_classes, **method_options(args)
        )
        meta = segmenter.meta()
        if env.is_primary:
            kind = "weights-free over-segmentation" if meta["weights_free"] else "model"
            log.info(
                "pseudo-labels from %s (%s), %d classes", args.method, kind, meta["num_classes"]
            )
        report = run_image_job(
            source,
            args.out,
            predict=segmenter.predict,
            output_path=segments_path,
            write=write_segments,
            meta=meta,
            batch_size=1,
            max_images=args.max_images,
            env=env,
            job=f"pseudo_labels[{args.method}]",
        )
    except (ValueError, OSError) as err:
        print(f"pseudo_labels: {err}", file=sys.stderr)
        return 2
    print(report.line(f"pseudo_labels[{args.method}]", args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
