"""Coded concepts for a segment: what kind of thing it is (category) and what it is (type), from the DICOM
context groups for segmentation (PS3.16 CID 7150 and the type groups of each category)."""

from __future__ import annotations

import re

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

# Each category of CID 7150 with the context group of the types it holds, most likely first.
_TYPES_BY_CATEGORY = (
    (codes.cid7150.AnatomicalStructure, codes.cid7192),
    (codes.cid7150.Tissue, codes.cid7191),
    (codes.cid7150.MorphologicallyAbnormalStructure, codes.cid7194),
    (codes.cid7150.PhysicalObject, codes.cid7193),
    (codes.cid7150.BodySubstance, codes.cid7197),
    (codes.cid7150.Substance, codes.cid7198),
)
GENERIC = (codes.SCT.Tissue, codes.SCT.Tissue)  # what Slicer and dcmqi use for a segment of unknown kind


def _keyword(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def property_codes(label: str) -> tuple[Code, Code]:
    """(category, type) for a class name such as 'liver' or 'adrenal_gland'; the generic Tissue/Tissue where
    the name is no segmentation property type of DICOM (e.g. 'Anterior', a part of the hippocampus)."""
    wanted = _keyword(label)
    for category, group in _TYPES_BY_CATEGORY:
        for name in dir(group):
            if not name.startswith("_") and _keyword(name) == wanted:
                return category, getattr(group, name)
    return GENERIC
