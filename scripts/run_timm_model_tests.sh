#!/usr/bin/env bash
# Run timm's own generic model tests (tests/test_models.py of the installed timm release, from its source
# distribution on PyPI) against every convattn_* model. Nothing of timm's is kept in this repository.
#   bash scripts/run_timm_model_tests.sh [extra pytest arguments, e.g. -k "convattn_resnet20 and not torchscript"]
set -euo pipefail
py=$("${PYTHON:-python}" -c "import sys; print(sys.executable)")  # absolute: the tests run elsewhere
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ver=$($py -c "import timm; print(timm.__version__)")
$py -m pip download -q --no-deps --no-binary :all: "timm==$ver" -d "$work"
tar xzf "$work/timm-$ver.tar.gz" -C "$work"
echo "import convattn  # registers convattn_* with timm before timm's tests list the models" > "$work/convattn_plugin.py"
cd "$work/timm-$ver"
PYTHONPATH="$work" $py -m pytest -p convattn_plugin -p no:cacheprovider tests/test_models.py -k convattn -q "$@"
