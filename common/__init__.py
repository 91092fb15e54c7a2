"""Shared code every stage imports: dataset specs and loading, preparation,
transforms, manifests and checkpoint I/O, configuration, distributed setup,
device selection, logging and evaluation."""
