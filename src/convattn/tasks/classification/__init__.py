"""Image classification: settings (``config``), the run and evaluation (``run``), the ``compare`` study
(``study``) and its time budget (``budget``)."""
from .config import (LARGE_FOLDER, MIN_BATCH, MIN_UPDATES, PRESETS, TrainConfig, few_updates_batch, folder_recipe,
                     resolve_config, resolve_with_notes)
from .run import (ClassificationTask, build_model, data_for, describe_run, evaluate, evaluate_run, load_run,
                  recalibrate_bn, train)
from .study import DEFAULT_STUDY, ClassificationStudy, CompareConfig, resolve_compare, run_compare

__all__ = ["TrainConfig", "PRESETS", "resolve_config", "resolve_with_notes", "folder_recipe", "few_updates_batch",
           "LARGE_FOLDER", "MIN_UPDATES", "MIN_BATCH", "train", "evaluate", "evaluate_run", "load_run", "build_model",
           "data_for", "describe_run", "recalibrate_bn", "ClassificationTask", "CompareConfig", "run_compare",
           "resolve_compare", "ClassificationStudy", "DEFAULT_STUDY"]
