"""The cloud service: collect feature maps, fuse, run the cloud layers, answer."""
