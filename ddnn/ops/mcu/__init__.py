"""A device slice on a Cortex-M under QEMU (run.py), and the C files it is built with."""
