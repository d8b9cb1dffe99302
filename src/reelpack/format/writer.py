"""Writing a pack: the streaming :class:`PackWriter` and the one-call :func:`write_pack`.

:class:`PackWriter` streams blocks into a temporary file next to the destination and, on commit, fsyncs it,
renames it over the destination and fsyncs the folder (:mod:`reelpack.util.atomic`; a failure raises), so a
reader sees the old pack or the whole new one. :func:`write_pack` writes a whole pack from in-memory codes, with
optional per-layer entropy coding and Reed-Solomon parity (:mod:`reelpack.format.parity`).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.codecs import Codec
from reelpack.errors import DimensionMismatchError, DTypeError, InvalidInputError
from reelpack.format.entropy import LAYOUTS, ColumnModel, encode_block, fit_column_model
from reelpack.format.layout import (
    APP_SECTION_MIN,
    BLOCK_DTYPE,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    HEADER,
    HEADER_SIZE,
    LAYER,
    LAYER_ENTROPY_CODED,
    LAYERS_HEAD,
    MAGIC,
    MAX_CORRECTIONS_PER_VECTOR,
    MAX_ITEMS_PER_BLOCK,
    MAX_LAYERS,
    MAX_METADATA_BYTES,
    MODEL_PREFIX,
    NO_SECTION,
    SECTION,
    SECTION_REQUIRED,
    SectionType,
    crc32c,
)
from reelpack.format.parity import ParityPlan, parity_section
from reelpack.format.varint import encode_item_ids
from reelpack.util.atomic import fsync_dir, fsync_file
from reelpack.util.ids import check_item_ids

__all__ = ["PackWriter", "write_pack"]


@dataclass
class _PendingLayer:
    codec: Codec
    codec_bytes: bytes
    items_per_block: int
    corrections: np.ndarray | None
    entropy: str | None = None
    model: ColumnModel | None = None
    span: list[int] = field(default_factory=list)  # [start, end) file offsets of the written codes


def _model_section_length(layout: str, bytes_per_vector: int) -> int:
    per_byte, alphabet = {"bytes": (1, 256), "nibbles": (2, 16), "bits": (8, 2)}[layout]
    return MODEL_PREFIX.size + 12 + 2 * bytes_per_vector * per_byte * alphabet


def _round_up_f32(x: float) -> np.float32:
    """float32 that is >= x (so a stored maximum stays an upper bound)."""
    f = np.float32(x)
    if float(f) < x:
        f = np.nextafter(f, np.float32(np.inf))
    return f


class PackWriter:
    """Stream a pack to ``path``: add layers, then write each layer's blocks in order, then commit.

    Only the directory (ids, codecs, one 32-byte index entry per block) is held in
    memory; codes go to a temporary file in the destination directory as blocks
    arrive. :meth:`commit` fsyncs it and atomically replaces ``path``; on any error
    (or :meth:`abort`) the temporary file is removed and an existing ``path`` is
    untouched. As a context manager it commits on success and aborts on an exception.

    Args:
        path: destination file.
        item_ids: sorted, unique, non-negative integer ids [n_items]; block rows follow this order.
        metadata: optional JSON-serialisable dict stored in the METADATA section.
    """

    def __init__(self, path: str | os.PathLike[str], item_ids: np.ndarray, metadata: dict[str, Any] | None = None) -> None:
        ids = check_item_ids(item_ids, unique=False)  # sorted and unique: checked just below
        if ids.size > 1 and np.any(np.diff(ids) <= 0):
            raise InvalidInputError("PackWriter needs sorted unique item_ids (write_pack sorts for you)")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise InvalidInputError(f"metadata must be a dict, got {type(metadata).__name__}")
            try:
                self._metadata_bytes: bytes | None = json.dumps(metadata, sort_keys=True, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"metadata is not JSON-serialisable: {exc}") from None
            if len(self._metadata_bytes) > MAX_METADATA_BYTES:
                raise InvalidInputError(f"metadata is {len(self._metadata_bytes)} bytes, over {MAX_METADATA_BYTES}")
        else:
            self._metadata_bytes = None
        self.path = Path(path)
        self._ids_bytes = encode_item_ids(ids)
        self._n_items = int(ids.size)
        self._layers: list[_PendingLayer] = []
        self._extra_sections: list[tuple[int, int, bytes]] = []
        self._layout: dict[str, Any] | None = None
        self._index: list[bytes] = []
        self._cursor = (0, 0)  # (layer, block) expected next
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._tmp_path = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._done = False

    # ---- building -------------------------------------------------------------------------------
    def add_layer(self, codec: Codec, items_per_block: int = 1024, corrections: np.ndarray | None = None,
                  entropy: str | None = None, entropy_model: ColumnModel | None = None) -> int:  # fmt: skip
        """Declare the next layer (coarsest first); returns its index.

        Args:
            codec: a fitted codec; its ``to_bytes()`` is stored in the layer's CODEC section.
            items_per_block: items per block, 1..2**20 (the last block holds the rest).
            corrections: optional float32 [n_items, k] per-vector correction factors.
            entropy: ``None`` (plain fixed-width blocks) or a symbol layout of
                :mod:`reelpack.format.entropy` (``"nibbles"`` for sq4, ``"bytes"`` for sq8,
                ``"bits"``): store the layer ENTROPY_CODED, each block ANS-coded with a
                per-column model stored once in an ENTROPY_MODEL section.
            entropy_model: the layer's :class:`ColumnModel` (its layout is used; ``entropy``
                may then be omitted). Without it the model is fitted on the codes that
                :meth:`write_layer` receives, so such a layer must be written with
                ``write_layer``; block-by-block writing (:meth:`write_block`) needs the model up front.
        """
        if entropy_model is not None:
            if not isinstance(entropy_model, ColumnModel):
                raise InvalidInputError(f"entropy_model must be a ColumnModel, got {type(entropy_model).__name__}")
            if entropy is not None and entropy != entropy_model.layout:
                raise InvalidInputError(f"entropy={entropy!r} disagrees with the model's layout {entropy_model.layout!r}")
            if entropy_model.bytes_per_vector != getattr(codec, "bytes_per_vector", None):
                raise DimensionMismatchError("entropy_model bytes_per_vector differs from the codec's")
            entropy = entropy_model.layout
        if entropy is not None and entropy not in LAYOUTS:
            raise InvalidInputError(f"entropy must be None or one of {LAYOUTS}, got {entropy!r}")
        self._check_open()
        if self._layout is not None:
            raise InvalidInputError("add_layer() must come before the first write_block()")
        if not isinstance(codec, Codec) or not codec.is_fitted:
            raise InvalidInputError("add_layer() needs a fitted Codec")
        if len(self._layers) >= MAX_LAYERS:
            raise InvalidInputError(f"a pack holds at most {MAX_LAYERS} layers")
        if not isinstance(items_per_block, (int, np.integer)) or not 1 <= items_per_block <= MAX_ITEMS_PER_BLOCK:
            raise InvalidInputError(f"items_per_block must be in 1..{MAX_ITEMS_PER_BLOCK}, got {items_per_block!r}")
        corr = None
        if corrections is not None:
            corr = np.ascontiguousarray(corrections, dtype="<f4")
            if corr.ndim == 1:
                corr = corr[:, None]
            if corr.ndim != 2 or corr.shape[0] != self._n_items or not 1 <= corr.shape[1] <= MAX_CORRECTIONS_PER_VECTOR:
                raise DimensionMismatchError(
                    f"corrections must be [n_items={self._n_items}, k<={MAX_CORRECTIONS_PER_VECTOR}], got {corr.shape}"
                )
        self._layers.append(_PendingLayer(codec, codec.to_bytes(), int(items_per_block), corr, entropy, entropy_model))
        return len(self._layers) - 1

    def add_section(self, section_type: int, body: bytes, required: bool = False) -> None:
        """Add an application-defined section (type 0x8000..0xFFFF) or a PARITY section to the directory.

        Readers that do not know the type skip it when ``required`` is False and
        refuse the pack when it is True (docs/FORMAT.md, "Compatibility").
        """
        self._check_open()
        if self._layout is not None:
            raise InvalidInputError("add_section() must come before the first write_block()")
        ok_type = isinstance(section_type, (int, np.integer)) and (
            APP_SECTION_MIN <= section_type <= 0xFFFF or section_type == SectionType.PARITY
        )  # PARITY: built by reelpack.format.parity
        if not ok_type:
            raise InvalidInputError(f"section_type must be in {APP_SECTION_MIN:#x}..0xffff or PARITY (8), got {section_type!r}")
        if not isinstance(body, (bytes, bytearray)):
            raise InvalidInputError(f"section body must be bytes, got {type(body).__name__}")
        self._extra_sections.append((int(section_type), SECTION_REQUIRED if required else 0, bytes(body)))

    def _freeze(self) -> None:
        """Fix the layout and write every directory section but BLOCK_INDEX."""
        if not self._layers:
            raise InvalidInputError("a pack needs at least one layer: call add_layer() first")
        L = len(self._layers)
        n = self._n_items
        entries: list[dict[str, Any]] = []

        def add(t: int, body: bytes | None, length: int, required: bool = True) -> int:
            entries.append({"type": t, "flags": SECTION_REQUIRED if required else 0, "body": body, "length": length})
            return len(entries) - 1

        add(SectionType.ITEM_IDS, self._ids_bytes, len(self._ids_bytes))
        layers_idx = add(SectionType.LAYERS, None, LAYERS_HEAD.size + L * LAYER.size)
        codec_idx = [add(SectionType.CODEC, lay.codec_bytes, len(lay.codec_bytes)) for lay in self._layers]
        corr_idx = [
            add(SectionType.CORRECTIONS, lay.corrections.tobytes(), lay.corrections.nbytes)
            if lay.corrections is not None else NO_SECTION for lay in self._layers
        ]  # fmt: skip
        if self._metadata_bytes is not None:
            add(SectionType.METADATA, self._metadata_bytes, len(self._metadata_bytes), required=False)
        for t, flags, body in self._extra_sections:
            add(t, body, len(body), required=bool(flags & SECTION_REQUIRED))
        # written not REQUIRED: a 1.0 reader skips it and reports the ENTROPY_CODED layer as unusable
        model_idx = {
            i: add(SectionType.ENTROPY_MODEL, None, _model_section_length(lay.entropy, lay.codec.bytes_per_vector),
                   required=False)
            for i, lay in enumerate(self._layers) if lay.entropy is not None
        }  # fmt: skip
        n_blocks = [-(-n // lay.items_per_block) for lay in self._layers]
        index_idx = add(SectionType.BLOCK_INDEX, None, 32 * sum(n_blocks))
        # entropy-coded lengths are provisional (0) until commit(), which fixes the codes sections' offsets
        codes_idx = [add(SectionType.LAYER_CODES, None, 0 if lay.entropy else n * lay.codec.bytes_per_vector)
                     for lay in self._layers]  # fmt: skip
        offset = HEADER_SIZE + SECTION.size * len(entries)
        for e in entries:
            e["offset"] = offset
            offset += e["length"]
        for e in entries:
            if e["body"] is not None:
                self._file.seek(e["offset"])
                self._file.write(e["body"])
                e["crc"] = crc32c(e["body"])
                e["body"] = None
            else:
                e["crc"] = 0
        self._layout = {"entries": entries, "index_idx": index_idx, "codes_idx": codes_idx, "n_blocks": n_blocks,
                        "layers_idx": layers_idx, "codec_idx": codec_idx, "corr_idx": corr_idx, "model_idx": model_idx,
                        "prefix_length": entries[codes_idx[0]]["offset"]}  # fmt: skip
        self._file.seek(entries[codes_idx[0]]["offset"])
        self._corr_k = [0 if lay.corrections is None else lay.corrections.shape[1] for lay in self._layers]
        for lay in self._layers:
            lay.corrections = None  # written; free it

    def write_block(self, layer: int, codes: np.ndarray, vectors: np.ndarray | None = None,
                    sq_errors: np.ndarray | None = None) -> None:  # fmt: skip
        """Append the next block: codes uint8 [m, B] of layer ``layer`` (blocks in (layer, block) order).

        m is ``items_per_block`` except for the last block of the layer. The block's
        error bounds come from ``vectors`` float32 [m, d] (the originals: squared
        error of ``codec.decode(codes)``), or from ``sq_errors`` float [m]; with
        neither they are stored as NaN (unknown). Any error aborts the writer
        (the temporary file is removed).
        """
        self._check_open()
        try:
            if self._layout is None:
                self._freeze()
            self._write_block(layer, codes, vectors, sq_errors)
        except BaseException:
            self.abort()
            raise

    def _write_block(self, layer: int, codes: np.ndarray, vectors: np.ndarray | None, sq_errors: np.ndarray | None) -> None:
        cur_layer, cur_block = self._cursor
        if cur_layer >= len(self._layers):
            raise InvalidInputError("every block of every layer has been written already")
        if layer != cur_layer:
            raise InvalidInputError(f"expected a block of layer {cur_layer} (blocks go layer by layer), got layer {layer}")
        lay = self._layers[cur_layer]
        bpv = lay.codec.bytes_per_vector
        lo = cur_block * lay.items_per_block
        m = min(lay.items_per_block, self._n_items - lo)
        arr = np.asarray(codes)
        if arr.dtype != np.uint8:
            raise DTypeError(f"codes must be uint8, got {arr.dtype}")
        if arr.shape != (m, bpv):
            raise DimensionMismatchError(f"block {cur_block} of layer {cur_layer} must be codes [{m}, {bpv}], got {arr.shape}")
        arr = np.ascontiguousarray(arr)
        if lay.entropy is not None and lay.model is None:
            raise InvalidInputError(
                f"layer {cur_layer} is entropy coded without a model: pass entropy_model= to add_layer() "
                "or write it with write_layer()"
            )
        if vectors is not None:
            err = ((np.asarray(vectors, dtype=np.float64) - lay.codec.decode(arr).astype(np.float64)) ** 2).sum(axis=1)
        elif sq_errors is not None:
            err = np.asarray(sq_errors, dtype=np.float64).reshape(-1)
            if err.shape != (m,):
                raise DimensionMismatchError(f"sq_errors must be [{m}], got {err.shape}")
        else:
            err = None
        max_err = _round_up_f32(float(err.max())) if err is not None else np.float32(np.nan)
        mean_err = np.float32(err.mean()) if err is not None else np.float32(np.nan)
        offset = self._file.tell()
        payload = arr if lay.model is None else encode_block(arr, lay.model)
        self._file.write(payload.data if lay.model is None else payload)
        if cur_block == 0:
            lay.span = [offset, offset]
        lay.span[1] = offset + len(payload) if lay.model is not None else offset + arr.nbytes
        entry = (cur_layer, 0, cur_block, offset, lay.span[1] - offset, crc32c(payload), max_err, mean_err)
        self._index.append(np.array([entry], dtype=BLOCK_DTYPE).tobytes())
        cur_block += 1
        if cur_block == self._layout["n_blocks"][cur_layer]:  # type: ignore[index]
            cur_layer, cur_block = cur_layer + 1, 0
        self._cursor = (cur_layer, cur_block)

    def write_layer(self, layer: int, codes: np.ndarray, vectors: np.ndarray | None = None) -> None:
        """Write all blocks of ``layer`` from codes uint8 [n_items, B] (and optional originals [n_items, d])."""
        self._check_open()
        ipb = self._layers[layer].items_per_block if 0 <= layer < len(self._layers) else 1
        if np.shape(codes)[0] != self._n_items:
            self.abort()
            raise DimensionMismatchError(f"codes must have {self._n_items} rows, got {np.shape(codes)[0]}")
        if 0 <= layer < len(self._layers) and self._layers[layer].entropy and self._layers[layer].model is None:
            try:
                self._layers[layer].model = fit_column_model(np.asarray(codes), self._layers[layer].entropy)
            except BaseException:
                self.abort()
                raise
        for lo in range(0, self._n_items, ipb):
            v = None if vectors is None else vectors[lo : lo + ipb]
            self.write_block(layer, codes[lo : lo + ipb], vectors=v)

    def commit(self) -> Path:
        """Write the block index, section table and header; fsync; atomically publish to ``path``.

        The temporary file is fsynced (:func:`reelpack.util.atomic.fsync_file`), renamed over ``path``, and the
        folder is fsynced (:func:`reelpack.util.atomic.fsync_dir`); a failed fsync raises ``OSError`` (before
        the rename the temporary file is removed and ``path`` is untouched).
        """
        self._check_open()
        try:
            if self._layout is None:
                self._freeze()
            layout = self._layout
            if self._cursor[0] < len(self._layers):
                raise InvalidInputError(
                    f"cannot commit: layer {self._cursor[0]} still needs block {self._cursor[1]} and later"
                )
            entries = layout["entries"]
            for i, lay in enumerate(self._layers):  # the codes sections as written
                e = entries[layout["codes_idx"][i]]
                e["offset"], e["length"] = lay.span[0], lay.span[1] - lay.span[0]
            file_length = self._layers[-1].span[1]
            layer_records = b"".join(
                LAYER.pack(i, LAYER_ENTROPY_CODED if lay.entropy else 0, layout["codec_idx"][i], layout["codes_idx"][i],
                            layout["corr_idx"][i], lay.codec.bytes_per_vector, lay.items_per_block, layout["n_blocks"][i],
                            0 if layout["corr_idx"][i] == NO_SECTION else self._corr_k[i],
                            lay.span[0], lay.span[1] - lay.span[0])
                for i, lay in enumerate(self._layers)
            )  # fmt: skip
            late = [(layout["layers_idx"], LAYERS_HEAD.pack(len(self._layers), 0) + layer_records)]
            for i, idx in layout["model_idx"].items():
                late.append((idx, MODEL_PREFIX.pack(i, 0) + self._layers[i].model.to_bytes()))
            for idx, body in late:
                assert len(body) == entries[idx]["length"]
                self._file.seek(entries[idx]["offset"])
                self._file.write(body)
                entries[idx]["crc"] = crc32c(body)
            index_bytes = b"".join(self._index)
            index_entry = entries[layout["index_idx"]]
            assert len(index_bytes) == index_entry["length"]
            self._file.seek(index_entry["offset"])
            self._file.write(index_bytes)
            index_entry["crc"] = crc32c(index_bytes)
            table = b"".join(SECTION.pack(e["type"], e["flags"], e["crc"], e["offset"], e["length"]) for e in entries)
            head = HEADER.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, file_length, self._n_items, HEADER_SIZE,
                                len(entries), crc32c(table), layout["prefix_length"], 0, 0)[:60]  # fmt: skip
            self._file.seek(0)
            self._file.write(head + struct.pack("<I", crc32c(head)) + table)
            self._file.flush()
            os.fchmod(self._file.fileno(), _publish_mode(self.path))
            self._file.close()
            fsync_file(self._tmp_path)
            os.replace(self._tmp_path, self.path)
            self._done = True
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Discard the temporary file; ``path`` is left as it was."""
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        finally:
            try:
                self._tmp_path.unlink()
            except FileNotFoundError:
                pass

    def __del__(self) -> None:
        # a writer dropped without commit() leaves no temporary file behind
        if not getattr(self, "_done", True):
            try:
                self.abort()
            except Exception:  # noqa: BLE001  interpreter shutdown: nothing more to do
                pass

    def _check_open(self) -> None:
        if self._done:
            raise InvalidInputError("this PackWriter has already been committed or aborted")

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _publish_mode(path: Path) -> int:
    """Permission bits for the published pack: those of the pack it replaces, else 0o666 less the umask.

    (mkstemp creates the temporary file 0o600; a pack is normally served or shared.)
    """
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def write_pack(
    path: str | os.PathLike[str],
    item_ids: np.ndarray,
    layers: Sequence[tuple[Codec, np.ndarray] | tuple[Codec, np.ndarray, np.ndarray]],
    vectors: np.ndarray | None = None,
    metadata: dict[str, Any] | None = None,
    items_per_block: int | Sequence[int] = 1024,
    entropy: Sequence[str | None] | None = None,
    parity: ParityPlan | None = None,
) -> Path:
    """Write a whole pack atomically.

    Args:
        path: destination file (replaced atomically).
        item_ids: unique non-negative integer ids [n] in any order.
        layers: ``(codec, codes)`` or ``(codec, codes, corrections)`` per layer, coarsest first;
            codes uint8 [n, B] and corrections float32 [n, k] in the order of ``item_ids``.
        vectors: optional originals float32 [n, d] (same order) for the per-block error bounds.
        metadata: optional JSON-serialisable dict (catalog version, created_at, ...).
        items_per_block: items per block, one value for every layer or one per layer.
        entropy: optional per-layer entropy layout (``None``, ``"nibbles"``, ``"bytes"``, ``"bits"``),
            one entry per layer; see :meth:`PackWriter.add_layer`.
        parity: optional Reed-Solomon parity (a PARITY section, docs/FORMAT.md "PARITY"): ``(k, m)`` for
            every layer, or ``{layer: (k, m)}`` for some layers: ``m`` parity blocks per group of ``k`` data
            blocks, ``k + m <= 256``. Protected layers must not be entropy coded. Read it back with
            :func:`~reelpack.format.read_parity` and :func:`~reelpack.format.recover_layer`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DTypeError, EmptyInputError, InvalidInputError: bad ids (not integers, empty, negative, >= 2**63,
            duplicates), no layer, a bad ``items_per_block``, ``entropy`` or ``parity``.
        DimensionMismatchError: codes, corrections or vectors without one row per id.
    """
    ids = check_item_ids(item_ids)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if not layers:
        raise InvalidInputError("write_pack needs at least one layer")
    if isinstance(items_per_block, (Sequence, np.ndarray)) and not isinstance(items_per_block, (str, bytes)):
        ipbs = list(items_per_block)
        if len(ipbs) != len(layers):
            raise InvalidInputError(f"items_per_block has {len(ipbs)} values for {len(layers)} layers")
    else:
        ipbs = [items_per_block] * len(layers)
    vec = None
    if vectors is not None:
        vec = np.asarray(vectors)
        if vec.ndim != 2 or vec.shape[0] != sorted_ids.size:
            raise DimensionMismatchError(f"vectors must be [{sorted_ids.size}, d], got {vec.shape}")
        vec = vec[order]
    if entropy is None:
        entropy = [None] * len(layers)
    if len(entropy) != len(layers):
        raise InvalidInputError(f"entropy needs one entry per layer ({len(layers)}), got {len(entropy)}")
    prepared = []
    for entry in layers:
        if not isinstance(entry, tuple) or len(entry) not in (2, 3):
            raise InvalidInputError("each layer must be (codec, codes) or (codec, codes, corrections)")
        codes = np.asarray(entry[1])
        if codes.ndim != 2 or codes.shape[0] != sorted_ids.size:
            raise DimensionMismatchError(f"codes must be [{sorted_ids.size}, B], got {codes.shape}")
        corr = None if len(entry) == 2 else np.asarray(entry[2])[order]
        prepared.append((entry[0], np.ascontiguousarray(codes[order]), corr))
    parity_body = b""
    if parity is not None:
        parity_body = parity_section(parity, [codes for _, codes, _ in prepared], ipbs,
                                     entropy_coded=[ent is not None for ent in entropy])  # fmt: skip
    writer = PackWriter(path, sorted_ids, metadata=metadata)
    with writer:
        for (codec, _, corr), ipb, ent in zip(prepared, ipbs, entropy):
            writer.add_layer(codec, items_per_block=ipb, corrections=corr, entropy=ent)
        if parity_body:
            writer.add_section(SectionType.PARITY, parity_body, required=False)
        for i, (_, codes, _) in enumerate(prepared):
            writer.write_layer(i, codes, vectors=vec)
    return writer.path
