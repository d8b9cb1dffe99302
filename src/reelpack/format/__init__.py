"""The reelpack pack format: a checksummed, block-addressable container of compressed item embeddings.

The byte layout is specified in docs/FORMAT.md. Write with :func:`write_pack` or
:class:`PackWriter`; read with :class:`PackReader` (memory-mapped, zero-copy code
views), :func:`iter_blocks_stream` (blocks as bytes arrive) or :func:`inspect`.
"""

from reelpack.format import container
from reelpack.format.container import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    MAGIC,
    Block,
    LayerData,
    LayerInfo,
    PackReader,
    PackStream,
    PackWriter,
    SectionType,
    VerifyReport,
    inspect,
    iter_blocks_stream,
    write_pack,
)

__all__ = list(container.__all__)

from reelpack.format.delta import DeltaReport, apply_delta, build_pack, make_delta  # noqa: E402

__all__ += ["DeltaReport", "build_pack", "make_delta", "apply_delta"]

from reelpack.format.parity import (  # noqa: E402
    LayerRecovery,
    ParityLayer,
    encode_parity,
    read_parity,
    recover_layer,
    write_pack_with_parity,
)

__all__ += ["ParityLayer", "LayerRecovery", "encode_parity", "read_parity", "recover_layer", "write_pack_with_parity"]
