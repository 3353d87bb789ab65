"""Comparative studies, written once for every task: baseline and attention variants under one recipe and several
seeds (loop over variants and seeds, resumption, statistics, report).

A task supplies what differs as a :class:`StudyTask`: ``convattn.tasks.classification.study`` (``CompareConfig``,
``run_compare``) and ``convattn.tasks.detection.study`` (``compare_detection``).
"""
from .compare import Metric, StudyTask, run_study

__all__ = ["run_study", "StudyTask", "Metric"]
