"""Comparative studies: baseline and attention variants under one recipe and several seeds, for every task.

``compare``: the study itself (loop over variants and seeds, resumption, statistics, report), written once;
``classification`` and ``detection`` (import ``convattn.study.detection``; it loads torchvision's detectors): what
each task supplies to it.
"""
from .classification import ClassificationStudy, CompareConfig, run_compare
from .compare import Metric, StudyTask, run_study

__all__ = ["CompareConfig", "run_compare", "run_study", "StudyTask", "Metric", "ClassificationStudy"]
