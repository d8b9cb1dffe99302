"""Benchmarks: the quality harness (:mod:`reelpack.bench.harness`, ``reelpack bench``) with faiss baselines in
the same run, device-path speed (:mod:`reelpack.bench.speed`), loss robustness, the energy model, the
contest score, Markdown/JSON/HTML reports (``[report]`` extra for the figures) and the service load test."""
