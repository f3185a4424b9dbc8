"""Domain logic of the analysis service: streaming anomaly detection and causal attribution.

Pure computation over numpy/pandas (and dowhy, imported lazily): no database driver,
no Kafka, no HTTP. services/analysis feeds it events and publishes what it finds.
"""
