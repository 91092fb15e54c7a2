"""Datasets: the ``DatasetSpec`` registry, ImageFolder loading, real-image loaders, transforms and
preparation of archives as shipped (``wmdd prepare``)."""
