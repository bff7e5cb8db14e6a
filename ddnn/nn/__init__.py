"""The PyTorch side: binarized layers, the fusion modules, the DDNN model, joint training,
offline evaluation, model files and the per-role export (packing a slice into bits included)."""
