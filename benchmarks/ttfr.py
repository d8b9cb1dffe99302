"""Time to first recommendation (TTFR) of a fresh phone over simulated networks, and the quality it gets.

Builds a SYNTHETIC clustered catalog (``reelpack.bench.speed.synthetic_catalog``, default 100k x 64) with
``build_catalog`` (codecs "pq4 sq8": layer 0 = 4-byte PQ codes, layer 1 = SQ8), serves it with the real app
(uvicorn in a thread on 127.0.0.1, a free port) and, per network profile, runs a PhoneClient with an empty
SQLite cache through a virtual-clock ShapedTransport over real loopback HTTP:

    TTFR = sync + first recommend = simulated network seconds (profile: RTT per request + body bytes over the
           link + simulated losses and back-off) + real wall seconds (SQLite, checks, scanner, scoring; the
           in-process server's work is in this wall time too).

Then Recall@K of the refined recommendation (and of layer 0 alone) against exact float32 inner-product top-K for
``--users`` users drawn from the same distribution as the items.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/ttfr.py            # 100k x 64, 1mbit / 3g / 4g
    python benchmarks/ttfr.py --n 20000 --profiles 3g --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from reelpack.bench.speed import synthetic_catalog  # noqa: E402
from reelpack.service.app import create_app  # noqa: E402
from reelpack.device.client import PhoneClient  # noqa: E402
from reelpack.device.shaper import ShapedTransport, get_profile  # noqa: E402
from reelpack.catalog.store import CatalogStore, build_catalog  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """uvicorn serving the app on 127.0.0.1 in a background thread (bounded start-up)."""

    def __init__(self, store_root: Path) -> None:
        import uvicorn

        self.port = _free_port()
        config = uvicorn.Config(create_app(store_root), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="catalog items")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--codecs", default="pq4 sq8", help="layer 0 first, e.g. 'pq4 sq8'")
    ap.add_argument("--profiles", default="1mbit,3g,4g")
    ap.add_argument("--users", type=int, default=100, help="users for Recall@K")
    ap.add_argument("-k", type=int, default=50)
    ap.add_argument("--refine", type=int, default=500)
    ap.add_argument("--chunk-kib", type=int, default=64)
    ap.add_argument("--id-stride", type=int, default=1,
                    help="item ids are 1000 + stride * row: 1 = dense ids (stored as runs); >1 costs ~1 B/item")
    ap.add_argument("--refine-sweep", default="0,200,500,1000,2000", help="refine values for the recall table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    warnings.filterwarnings("ignore")
    all_vecs = synthetic_catalog(args.n + args.users, args.dim, seed=args.seed)
    X, users = all_vecs[: args.n], all_vecs[args.n :]
    ids = np.arange(args.n, dtype=np.int64) * args.id_stride + 1000
    out: dict = {"n_items": args.n, "dim": args.dim, "codecs": args.codecs, "k": args.k, "refine": args.refine,
                 "chunk_bytes": args.chunk_kib * 1024, "profiles": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="reelpack-ttfr-") as tmp:
        store = CatalogStore(Path(tmp) / "store")
        t0 = time.perf_counter()
        entry = build_catalog(store, "bench", ids, X, codecs=args.codecs.split(), index=False, seed=args.seed)
        out["build_seconds"] = round(time.perf_counter() - t0, 2)
        out["layer0_bytes"] = entry["files"]["layer0"]["bytes"]
        out["pack_bytes"] = entry["files"]["pack"]["bytes"]
        print(f"catalog: {args.n} x {args.dim} SYNTHETIC, codecs {args.codecs}; layer0.rpk {out['layer0_bytes']} B, "
              f"pack.rpk {out['pack_bytes']} B; built in {out['build_seconds']} s", flush=True)  # fmt: skip
        with _Server(store.root) as server:
            last_cache = None
            for name in args.profiles.split(","):
                profile = get_profile(name.strip())
                cache = Path(tmp) / f"phone-{profile.name}.db"
                shaped = ShapedTransport(httpx.HTTPTransport(), profile, seed=args.seed)
                chunk = args.chunk_kib * 1024
                with PhoneClient(server.url, "bench", cache, transport=shaped, chunk_bytes=chunk) as phone:
                    sync = phone.sync()
                    rec = phone.recommend(users[0], k=args.k, refine=args.refine)
                    down, up, requests, cuts = shaped.bytes_down, shaped.bytes_up, shaped.requests, shaped.cuts
                    t1 = time.perf_counter()
                    again = phone.recommend(users[1], k=args.k, refine=args.refine)
                    warm_wall = time.perf_counter() - t1
                r = {
                    "ttfr_seconds": round(sync.seconds + rec.seconds, 3),
                    "simulated_seconds": round(sync.simulated_seconds + rec.simulated_seconds, 3),
                    "wall_seconds": round(sync.wall_seconds + rec.wall_seconds, 3),
                    "sync_seconds": round(sync.seconds, 3),
                    "recommend_seconds": round(rec.seconds, 3),
                    "file_bytes": sync.bytes_downloaded,
                    "metadata_bytes": sync.metadata_bytes,
                    "refine_bytes": rec.bytes_downloaded,
                    "bytes_down": down,
                    "bytes_up": up,
                    "requests": requests,
                    "cuts": cuts,
                    "refined": rec.refined,
                    "warm_recommend_seconds": round(again.seconds, 3),
                    "warm_recommend_wall_seconds": round(warm_wall, 4),
                }
                out["profiles"][profile.name] = r
                last_cache = cache
                print(f"{profile.name:>6}: TTFR {r['ttfr_seconds']:.2f} s = {r['simulated_seconds']:.2f} s simulated "
                      f"+ {r['wall_seconds']:.2f} s wall (sync {r['sync_seconds']:.2f} s, first recommend "
                      f"{r['recommend_seconds']:.2f} s); down {r['bytes_down']} B (file {r['file_bytes']}, "
                      f"refine {r['refine_bytes']}), up {r['bytes_up']} B, {r['requests']} requests, {r['cuts']} cuts; "
                      f"next recommend {r['warm_recommend_seconds']:.2f} s", flush=True)  # fmt: skip
            # Quality: the same cache, unshaped loopback.
            exact = np.argsort(-(users @ X.T), axis=1, kind="stable")[:, : args.k]
            out["recall"] = {}
            with PhoneClient(server.url, "bench", last_cache) as phone:
                for refine in sorted({args.refine, *(int(x) for x in args.refine_sweep.split(","))}):
                    hits, n_refined, nbytes = [], 0, 0
                    t1 = time.perf_counter()
                    for u, ex in zip(users, exact):
                        rec = phone.recommend(u, k=args.k, refine=refine)
                        n_refined += rec.refined
                        nbytes += rec.bytes_downloaded
                        hits.append(np.intersect1d(rec.ids, ids[ex]).size / args.k)
                    ms = (time.perf_counter() - t1) / len(users) * 1000
                    out["recall"][refine] = {"recall": round(float(np.mean(hits)), 4), "refined": n_refined,
                                             "bytes_per_user": nbytes / len(users),
                                             "loopback_ms": round(ms, 2)}  # fmt: skip
                    print(f"Recall@{args.k} vs exact float32, {len(users)} users, refine={refine:>5} "
                          f"({'layer 0 only' if refine == 0 else 'rescored with ' + args.codecs.split()[-1]}): "
                          f"{np.mean(hits):.4f}; {nbytes / len(users):.0f} B/user down, {ms:.1f} ms/user on loopback",
                          flush=True)  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
    sys.exit(0)
