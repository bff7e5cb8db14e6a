"""The end-device service: frame sources, the device slice, scores and offloaded features."""
