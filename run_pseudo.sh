#!/usr/bin/env bash
# Pseudo-label training: a shim over `python -m wmdd.run_pseudo` (`wmdd run-pseudo --help`).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m wmdd.run_pseudo "$@"
