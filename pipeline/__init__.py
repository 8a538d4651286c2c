"""medseg: a MONAI pipeline for segmenting CT and MRI volumes with U-Nets."""

__version__ = "0.1.0"
