"""Offline catalog builds into a versioned store.

* :mod:`reelpack.catalog.store`: :class:`~reelpack.catalog.store.CatalogStore` (manifest, staging, lock) and
  :func:`~reelpack.catalog.store.build_catalog` (``reelpack build-catalog``), in-process.
* :mod:`reelpack.catalog.build`: the encode pipeline both builds share (fit on a sample, encode block by
  block, stream the packs) and :func:`~reelpack.catalog.build.build_catalog_sharded`, the same pipeline on
  Dask (the ``[scale]`` extra; docs/SCALE.md).
* :mod:`reelpack.catalog.ann`: the HNSW index (usearch, the ``[serve]`` extra) built with each version.
* :mod:`reelpack.catalog.edge`: the hierarchical index built with each version and the device summary
  cut from it (the device's decision rule is :mod:`reelpack.device.edge`).

Nothing here imports Dask or usearch until a build asks for them.
"""
