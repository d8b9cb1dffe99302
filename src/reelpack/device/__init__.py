"""The phone side: :class:`~reelpack.device.client.PhoneClient` (sync, cache, local ranking, refinement),
the network shaper that plays a thin link (:mod:`reelpack.device.shaper`), and the edge retriever that
decides between the local summary and the cloud (:mod:`reelpack.device.edge`). Needs the ``[serve]`` extra
(httpx)."""
