"""The networks and the model file: the U-Nets (MONAI's and the U-Net paper's), the network planned from the
dataset fingerprint, and the self-describing model file that training writes and inference reads."""
