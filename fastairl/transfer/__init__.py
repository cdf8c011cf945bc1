"""Transfer tools: a pre-trained encoder out to torchvision (``export_backbone``) or
detectron2 (``convert_detectron2``), and NormRescale between two of them
(``norm_rescale``). Each is a command (``python -m fastairl.<tool>``); reading backbones
out of checkpoints is ``fastairl.backbone_io``, shared with the evaluation tools."""
