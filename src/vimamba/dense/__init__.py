"""Vim as a backbone for dense prediction: semantic segmentation (UperNet) and detection / instance segmentation
(torchvision Mask R-CNN / Faster R-CNN), with ViTDet's simple feature pyramid."""
