"""The one UID root of the DICOM objects Ictus generates.

``UID_ROOT`` is pydicom's root (``1.2.826.0.1.3680043.8.498.``);
:func:`derive_uid` hashes its entropy below it, so the same inputs always give
the same UID (phantom studies, derived series, frames of reference).
"""
from __future__ import annotations

UID_ROOT = "1.2.826.0.1.3680043.8.498."


def derive_uid(*entropy: str) -> str:
    """A deterministic UID under :data:`UID_ROOT` from the given strings."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=list(entropy)))


__all__ = ["UID_ROOT", "derive_uid"]
