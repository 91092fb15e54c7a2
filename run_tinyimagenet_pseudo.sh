#!/usr/bin/env bash
# Pseudo-label training on tiny-imagenet: run_pseudo.sh with -d tiny-imagenet; see run_pseudo.sh --help.
exec "$(dirname "${BASH_SOURCE[0]}")/run_pseudo.sh" -d tiny-imagenet "$@"
