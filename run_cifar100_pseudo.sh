#!/usr/bin/env bash
# Pseudo-label training on cifar100: run_pseudo.sh with -d cifar100; see run_pseudo.sh --help.
exec "$(dirname "${BASH_SOURCE[0]}")/run_pseudo.sh" -d cifar100 "$@"
