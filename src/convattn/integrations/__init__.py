"""Integrations of convattn's modules into other packages' training workflows, each in its own module and imported
only where used (nothing here imports the other package):

    ultralytics   ``attach_yolo``: attention in Ultralytics YOLO models, kept by ultralytics' own trainer,
                  checkpoints, resume, val, predict and export (extra ``[yolo]``; ultralytics is AGPL-3.0)
    yolo_data     the embedded detection set in YOLO format (needs no ultralytics)
    yolo_study    the YOLO task of ``convattn compare --task yolo``
"""
