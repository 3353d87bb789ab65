"""The training tasks, side by side, each on the shared engine (``convattn.engine``: the loop, the run skeleton,
checkpoints, optimizer groups, DDP) and the shared study (``convattn.study``):

* ``convattn.tasks.classification``: config and presets, the run, evaluation, the ``compare`` study and its
  time budget;
* ``convattn.tasks.detection``: torchvision detectors with attention backbones, COCO evaluation, its study
  (imports torchvision's detection models; COCO evaluation needs the ``detection`` extra).
"""
