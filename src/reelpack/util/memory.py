"""Peak-memory probes shared by the benches (Linux ``/proc``; ``None`` elsewhere)."""

from __future__ import annotations

__all__ = ["status_kb", "reset_peak_rss"]


def status_kb(field_name: str) -> int | None:
    """A ``/proc/self/status`` field in kB (``"VmRSS"``, ``"VmHWM"``), or ``None`` when unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        return None
    return None


def reset_peak_rss() -> int | None:
    """Reset the peak-RSS mark (``VmHWM``) to the current RSS; return that RSS in kB (``None`` if not possible)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # pragma: no cover - not Linux / not permitted
        return None
    return status_kb("VmRSS")
