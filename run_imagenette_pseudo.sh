#!/usr/bin/env bash
# Pseudo-label training on imagenette: run_pseudo.sh with -d imagenette; see run_pseudo.sh --help.
exec "$(dirname "${BASH_SOURCE[0]}")/run_pseudo.sh" -d imagenette "$@"
