"""The bit-packed device slice without PyTorch: its file format, NumPy and numba kernels, and
inspection. Packing a trained torch slice into bits is the export's job (ddnn.nn)."""
