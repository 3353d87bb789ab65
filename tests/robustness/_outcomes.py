"""The outcome classes of the hostile-input cases (tests/robustness), for its conftest.py and
``scripts/robustness_summary.py``.

Every case says what a failure of it would be, i.e. the class of the problem it was written for: ``silent`` (a
model, a study or data changed without a word), ``traceback`` (a raw traceback instead of one line), ``misleading``
(a message naming the wrong cause), ``security`` (reading or writing outside what was given, code execution, an
input that exhausts the machine) or ``loss`` (results or checkpoints lost). A case declares it with
``@pytest.mark.outcome("silent")``; the cases of rounds 1 and 3, written before the marker, get it from their
file's section header (``# --- silently wrong ---``), from :data:`CASES` or from :data:`FILES`.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

OUTCOMES = ("silent", "traceback", "misleading", "security", "loss")

#: the class of every case of a file (rounds 1 and 3), unless its section or :data:`CASES` says otherwise
FILES = {
    "test_bad_files.py": "silent",
    "test_cli_export_maps.py": "traceback",
    "test_fuzz.py": "silent",
    "test_kill_resume.py": "loss",
    "test_run_folder.py": "loss",
    "test_values.py": "silent",
    "test_round3_models.py": "silent",
    # round 4, files written beside test_round4.py: issue 39's cases 1, 2 and 5 (all silent), shared folders, YOLO,
    # study executors
    "test_round4_attach.py": "silent",
    "test_sharing_hostile.py": "traceback",
    "test_yolo_hostile.py": "traceback",
    "test_study_executors.py": "traceback",
}

#: single cases of those files whose class differs from their file's
CASES = {
    "test_bad_files.py::test_oversized_image_is_refused_by_name": "security",
    "test_bad_files.py::test_coco_file_name_stays_in_its_folder": "security",
    "test_bad_files.py::test_safe_names": "security",
    "test_bad_files.py::test_coco_entries_must_be_objects_and_sizes_numbers": "traceback",
    "test_fuzz.py::test_small_inputs_work_or_raise_value_error": "traceback",
    "test_fuzz.py::test_bf16_autocast_for_every_layer": "traceback",
    "test_run_folder.py::test_latest_json_cannot_point_outside": "security",
    "test_values.py::test_out_of_range_values_are_refused_in_one_line": "traceback",
    "test_values.py::test_other_commands_refuse_bad_values": "traceback",
    "test_values.py::test_eval_maps_predict_refuse_bad_values": "traceback",
    "test_values.py::test_unknown_module_option_is_one_line": "traceback",
    "test_values.py::test_worker_errors_are_reduced_to_their_last_line": "traceback",
    "test_values.py::test_debug_shows_the_traceback": "traceback",
    "test_values.py::test_check_value_types_and_bounds": "traceback",
    "test_values.py::test_eval_prints_even_when_the_run_folder_is_read_only": "traceback",
    "test_values.py::test_data_set_without_a_default_recipe_is_refused": "traceback",
    "test_round3_models.py::test_unreadable_safetensors_is_one_line_naming_the_file": "traceback",
    "test_round3_models.py::test_a_directory_as_weights_says_it_is_a_directory": "misleading",
    "test_round3_models.py::test_vision_transformer_is_refused_as_not_a_cnn": "misleading",
    "test_round3_models.py::test_timm_features_only_takes_the_callers_feature_cfg": "traceback",
    "test_round3_models.py::test_timm_features_fx_torchscript_is_the_documented_refusal": "traceback",
    "test_round3_models.py::test_torchscript_of_an_attached_model_is_refused_with_the_reason_and_the_routes": "traceback",
    "test_sharing_hostile.py::test_a_module_base_is_never_imported_by_the_folder": "security",
    "test_sharing_hostile.py::test_a_module_base_must_be_a_network_class": "security",
    "test_sharing_hostile.py::test_a_failed_save_leaves_the_folder_as_it_was": "loss",
    "test_study_executors.py::test_worker_killed_mid_run_resumes": "loss",
}

_SECTION = re.compile(r"^# --- (.*?) -+\s*$")


@lru_cache(maxsize=None)
def _sections(path: str) -> list[tuple[int, str]]:
    """(line, outcome) of each section header of a test file that names an outcome class (``# --- security ---``,
    ``# --- silently wrong ---``, ``# --- raw tracebacks ---``)."""
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        m = _SECTION.match(line)
        if m:
            title = m.group(1).lower()
            out.append((i, next((o for o in OUTCOMES if o in title), "")))
    return out


def declared_outcome(item: pytest.Item) -> str | None:
    """The outcome class of a collected case: its marker, its entry in CASES, its section or its file's."""
    marker = item.get_closest_marker("outcome")
    if marker is not None and marker.args:
        return marker.args[0]
    func = getattr(item, "originalname", None) or item.name.split("[")[0]
    code = getattr(getattr(item, "function", None), "__code__", None)
    return _fallback(Path(str(item.path)), func, getattr(code, "co_firstlineno", 0))


def static_outcomes(folder: Path) -> dict[str, str | None]:
    """``file::function`` -> outcome class of every test function of the suite's files, read from their source
    (marker, CASES, section, FILES; None: none declared): a check that needs no collection."""
    import ast
    out: dict[str, str | None] = {}
    for path in sorted(folder.glob("test_*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test"):
                continue
            marked = [d.args[0].value for d in node.decorator_list if isinstance(d, ast.Call) and d.args
                      and isinstance(d.args[0], ast.Constant) and ast.unparse(d.func).endswith("mark.outcome")]
            line = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out[f"{path.name}::{node.name}"] = marked[0] if marked else _fallback(path, node.name, line)
    return out


def _fallback(path: Path, func: str, line: int) -> str | None:
    if f"{path.name}::{func}" in CASES:
        return CASES[f"{path.name}::{func}"]
    section = [o for i, o in _sections(str(path)) if i < line]
    if section and section[-1]:
        return section[-1]
    return FILES.get(path.name)
