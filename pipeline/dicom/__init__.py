"""DICOM objects beyond image series: Segmentation (SEG) objects written from label maps and read back as them."""
