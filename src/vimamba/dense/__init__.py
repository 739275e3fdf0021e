"""Vim as a backbone for dense prediction (``docs/dense.md``).

* :mod:`.backbone`    block features as maps, ViTDet's simple feature pyramid, layer-decay hooks
* :mod:`.segmentor`   UperNet + auxiliary FCN head (:mod:`.heads`), whole-image and sliding-window inference
* :mod:`.detector`    torchvision Mask R-CNN / Faster R-CNN on the Vim pyramid
* :mod:`.seg_data`, :mod:`.coco_data`   ADE20K-layout and COCO-json datasets, checked on load, with augmentation
* :mod:`.seg_metrics`, :mod:`.coco_eval`, :mod:`.evaluate`   mIoU / pixel accuracy, COCO AP, sharded evaluation
* :mod:`.training`    segmentation and detection as tasks of the engine (:mod:`vimamba.engine`), their flags
* :mod:`.checkpoint`  rebuilding a dense model from its checkpoint
* :mod:`.commands`    ``vimamba segment ...`` and ``vimamba detect ...``
"""
from .backbone import BackboneConfig, SimpleFeaturePyramid, VimBackbone, build_backbone
from .checkpoint import load_dense_model
from .detector import DetectorConfig, VimFasterRCNN, VimMaskRCNN, build_detector, vitdet_backbone_config
from .segmentor import SegmentorConfig, VimSegmentor, build_segmentor

__all__ = [
    "BackboneConfig", "VimBackbone", "SimpleFeaturePyramid", "build_backbone",
    "SegmentorConfig", "VimSegmentor", "build_segmentor",
    "DetectorConfig", "VimMaskRCNN", "VimFasterRCNN", "build_detector", "vitdet_backbone_config",
    "load_dense_model",
]
