"""Foundations every layer may use: input validation (:mod:`reelpack.util.validate`), the one atomic file
writer (:mod:`reelpack.util.atomic`), the one item-id check (:mod:`reelpack.util.ids`), optional-extra imports
(:mod:`reelpack.util.extras`) and the peak-memory probe (:mod:`reelpack.util.memory`)."""
