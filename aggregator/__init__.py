"""The local aggregator service (every sample's state and exit decisions) and the edge."""
