#!/usr/bin/env python
"""Fine-tune and evaluate a fastairl backbone with detectron2 (detection and segmentation).

Usage (see det/README.md for installation and datasets)::

    python -m fastairl.convert_detectron2 out/moco_v2p/last.pth r50.pkl --encoder online
    python det/train_net.py --config-file det/pascal_voc_R_50_C4_24k_moco.yaml \
        --num-gpus 8 MODEL.WEIGHTS r50.pkl OUTPUT_DIR out/det/voc

detectron2's stock ``tools/train_net.py`` is not enough for the configs in this
folder: they name an ROI head detectron2 does not ship (``Res5ROIHeadsExtraNorm``),
a partial-COCO training set, and, for DeepLabV3, the DeepLab project's config keys,
augmentations and poly schedule. This script registers those and otherwise runs
detectron2's ``DefaultTrainer`` unchanged, so numbers stay comparable with
published detectron2 transfer results.
"""

from __future__ import annotations

import os
import random
import re
import sys
from typing import Any

try:
    import detectron2  # noqa: F401  (presence check; the real imports follow)
except ImportError:
    sys.exit(
        "error: det/train_net.py needs detectron2, which is not on PyPI: install it from source, e.g. "
        "python -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
        "(see det/README.md)"
    )

import detectron2.data.transforms as T
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import (
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    DatasetEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
    verify_results,
)
from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from detectron2.utils import comm

try:  # shipped with a source install of detectron2 as detectron2.projects.deeplab
    from detectron2.projects.deeplab import add_deeplab_config
    from detectron2.projects.deeplab import build_lr_scheduler as build_poly_lr_scheduler
except ImportError:
    add_deeplab_config = None
    build_poly_lr_scheduler = None


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """C4 ROI head whose res5 block ends with one more norm layer (``cfg.MODEL.RESNETS.NORM``).

    A detectron2 res5 block ends in a residual sum + ReLU, whose scale depends on
    how the backbone was pre-trained; self-supervised backbones end with very
    different feature scales than supervised ones. Normalising the pooled res5
    features gives the box (and mask) predictors inputs of a fixed scale, so one
    fine-tuning recipe suits every pre-training. The norm starts from scratch: the
    converted backbone has no weights for it.
    """

    @classmethod
    def _build_res5_block(cls, cfg: CfgNode) -> tuple[Any, int]:
        res5, out_channels = super()._build_res5_block(cfg)
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return res5, out_channels


# "coco_2017_train_10pct" -> a fixed 10 % subset of coco_2017_train.
_PARTIAL = re.compile(r"(?P<base>coco_\d{4}_train)_(?P<pct>\d+)pct")
_PARTIAL_SEED = 0


def register_partial_datasets(names: list[str] | tuple[str, ...]) -> None:
    """Register every ``<coco train set>_<P>pct`` name as a seeded P % image subset.

    The subset is drawn from the images sorted by id with a fixed seed, so every
    run, every GPU process and every pre-trained model sees the same images, which
    keeps partial-data comparisons between backbones fair.
    """
    for name in names:
        m = _PARTIAL.fullmatch(name)
        if m is None or name in DatasetCatalog.list():
            continue
        base, pct = m.group("base"), int(m.group("pct"))
        if not 0 < pct < 100:
            sys.exit(f"error: dataset {name}: the percentage must be between 1 and 99")
        if base not in DatasetCatalog.list():
            sys.exit(f"error: dataset {name} needs {base}, which detectron2 does not know")

        def load(base: str = base, pct: int = pct) -> list[dict]:
            records = sorted(DatasetCatalog.get(base), key=lambda r: r["image_id"])
            keep = max(1, round(len(records) * pct / 100))
            chosen = sorted(random.Random(_PARTIAL_SEED).sample(range(len(records)), keep))
            return [records[i] for i in chosen]

        DatasetCatalog.register(name, load)
        # Class names and id mapping carry over; the annotation file does not, since
        # it describes the full set (an evaluator must build its own from the subset).
        meta = {k: v for k, v in MetadataCatalog.get(base).as_dict().items() if k not in ("name", "json_file")}
        MetadataCatalog.get(name).set(**meta)


def _is_deeplab(cfg: CfgNode) -> bool:
    return cfg.MODEL.SEM_SEG_HEAD.NAME in ("DeepLabV3Head", "DeepLabV3PlusHead")


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with evaluators chosen from the dataset metadata,
    and the DeepLab project's training augmentation and poly schedule when needed."""

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        kind = MetadataCatalog.get(dataset_name).evaluator_type
        if kind == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        if kind == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if kind == "sem_seg":
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        if kind == "cityscapes_sem_seg":
            return CityscapesSemSegEvaluator(dataset_name)
        raise ValueError(f"no evaluator for dataset {dataset_name} (evaluator_type {kind!r})")

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        if not _is_deeplab(cfg):
            return super().build_train_loader(cfg)
        augs = [
            T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
        ]
        if cfg.INPUT.CROP.ENABLED:
            # Crops dominated by one class (e.g. all road) teach little; the DeepLab
            # recipe re-draws them.
            augs.append(
                T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE,
                    cfg.INPUT.CROP.SIZE,
                    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                )
            )
        augs.append(T.RandomFlip())
        return build_detection_train_loader(cfg, mapper=DatasetMapper(cfg, is_train=True, augmentations=augs))

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer):
        if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
            return build_poly_lr_scheduler(cfg, optimizer)
        return super().build_lr_scheduler(cfg, optimizer)


def _check_inputs(cfg: CfgNode, args: Any) -> None:
    """Fail in one line, before minutes of model building, on the usual setup mistakes."""
    weights = cfg.MODEL.WEIGHTS
    if not weights and not args.resume:
        what = ("the fine-tuned model_final.pth to evaluate" if args.eval_only else
                "the backbone .pkl made by python -m fastairl.convert_detectron2")
        sys.exit(f"error: MODEL.WEIGHTS is empty: add 'MODEL.WEIGHTS <path>' with {what} to the command line")
    if weights and "://" not in weights and not os.path.isfile(weights):
        sys.exit(f"error: MODEL.WEIGHTS file not found: {weights}")
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    if not os.path.isdir(root):
        sys.exit(f"error: dataset root {root!r} not found: set DETECTRON2_DATASETS to the folder holding "
                 "coco/, VOC2007/, VOC2012/, cityscapes/ (see det/README.md)")


def build_cfg(args: Any) -> CfgNode:
    """Build the config: detectron2 defaults, DeepLab keys when available, file, command line."""
    cfg = get_cfg()
    if add_deeplab_config is not None:
        add_deeplab_config(cfg)
    if not os.path.isfile(args.config_file):
        sys.exit(f"error: config file not found: {args.config_file}")
    try:
        cfg.merge_from_file(args.config_file)
    except KeyError as exc:
        if add_deeplab_config is None:
            sys.exit(f"error: {args.config_file} uses keys of detectron2's DeepLab project ({exc}); "
                     "install detectron2 from source so that detectron2.projects.deeplab is importable")
        raise
    cfg.merge_from_list(args.opts)
    if _is_deeplab(cfg) and build_poly_lr_scheduler is None:
        sys.exit("error: DeepLab configs need detectron2.projects.deeplab; install detectron2 from source")
    cfg.freeze()
    return cfg


def setup(args: Any) -> CfgNode:
    """Per-process setup (logging, output folder, seed) on top of :func:`build_cfg`."""
    cfg = build_cfg(args)
    default_setup(cfg, args)
    return cfg


def main(args: Any) -> Any:
    cfg = setup(args)
    register_partial_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    cli = default_argument_parser().parse_args()
    # Check once, in the launching process, so a mistake gives one message instead of
    # one failure per spawned GPU worker.
    _check_inputs(build_cfg(cli), cli)
    launch(
        main,
        cli.num_gpus,
        num_machines=cli.num_machines,
        machine_rank=cli.machine_rank,
        dist_url=cli.dist_url,
        args=(cli,),
    )
