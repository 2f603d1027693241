"""Every metric and tag key geomsweep writes, spelled once (the bottom layer: any layer may read them)."""
