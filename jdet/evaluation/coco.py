"""COCO mAP over video frames (mAP@0.5, mAP@0.5:0.95) through faster-coco-eval."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jdet.submission import Box, check_detections, names


def _empty_map_result(num_images: int, num_gt: int, num_det: int) -> dict[str, Any]:
    recall_points = np.linspace(0.0, 1.0, 101)
    return {
        "mAP50": 0.0,
        "mAP50-95": 0.0,
        "precision_curve": np.zeros(101),
        "recall_points": recall_points,
        "num_images": num_images,
        "num_gt": num_gt,
        "num_det": num_det,
        "no_gt": num_gt == 0,
    }


def coco_map(
    gt: Mapping[str, Mapping[int, Box]],
    detections: Mapping[str, Mapping[int, Any]],
    frames: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, Any]:
    """COCO box AP over frames, through faster-coco-eval (pycocotools' numbers).

    gt: {video_id: {frame: (x1, y1, x2, y2)}} pixels (Tracks; at most one GT box per frame).
    detections: {video_id: {frame: [n, 5] f32 (x1, y1, x2, y2, score)}} pixels, n ≥ 0; every
        video must be in `gt`.
    frames: the evaluated frames per video (e.g. every 5th frame); default: per GT video the
        union of its GT frames and detection frames. GT boxes on frames not listed are left out;
        detections on frames not listed raise ValueError. A video of `frames` must be in `gt`.

    One COCO image per (video, evaluated frame), one category; GT `area = w·h`, `iscrowd 0`.

    Returns {"mAP50", "mAP50-95": float; "precision_curve": [101] f64, precision at IoU 0.5 at
    each recall point (area all, maxDets 100; 0 beyond the reached recall); "recall_points":
    [101] f64 (0, 0.01, …, 1); "num_images", "num_gt", "num_det": int; "no_gt": bool}.
    Without any GT box COCO's AP is undefined (-1): mAPs are reported as 0.0 with
    "no_gt": True. Without detections AP is 0.0 (COCO is not run).
    """
    extra = [v for v in detections if v not in gt]
    if extra:
        raise ValueError(f"detections for videos not in the ground truth: {names(extra)}")
    if frames is not None:
        extra = [v for v in frames if v not in gt]
        if extra:
            raise ValueError(f"frames for videos not in the ground truth: {names(extra)}")

    images, annotations, results = [], [], []
    for video_id, gt_boxes in gt.items():
        video_dets = detections.get(video_id, {})
        if frames is None:
            evaluated = sorted(set(gt_boxes) | set(video_dets))
        else:
            evaluated = sorted({int(f) for f in frames.get(video_id, ())})
            outside = sorted(set(video_dets) - set(evaluated))
            if outside:
                raise ValueError(
                    f"video {video_id!r}: detections on frames not evaluated: {outside[:5]}"
                )
        for frame in evaluated:
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{video_id}/{frame}"})
            if frame in gt_boxes:
                x1, y1, x2, y2 = (float(v) for v in gt_boxes[frame])
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x1, y1, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
            if frame in video_dets:
                for x1, y1, x2, y2, score in check_detections(video_id, frame, video_dets[frame]):
                    results.append(
                        {
                            "image_id": image_id,
                            "category_id": 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score,
                        }
                    )

    if not annotations or not results:
        # No GT: COCO excludes the category (-1). No detections: AP is 0; older pycocotools'
        # loadRes also fails on an empty list, so COCO is not run at all.
        return _empty_map_result(len(images), len(annotations), len(results))

    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*args, **kwargs) -> None:
        return None

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.print_function = quiet
        coco_gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "object"}],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        coco_dt.print_function = quiet
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    params = evaluator.params
    # precision: [T IoU thresholds, R recall points, K categories, A area ranges, M maxDets]
    precision = np.asarray(evaluator.eval["precision"], np.float64)
    area_all = params.areaRngLbl.index("all")
    max_dets = len(params.maxDets) - 1  # 100
    iou50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    curve = np.clip(precision[iou50, :, 0, area_all, max_dets], 0.0, None)  # [101]
    return {
        "mAP50": float(evaluator.stats[1]),
        "mAP50-95": float(evaluator.stats[0]),
        "precision_curve": curve,
        "recall_points": np.asarray(params.recThrs, np.float64),
        "num_images": len(images),
        "num_gt": len(annotations),
        "num_det": len(results),
        "no_gt": False,
    }
