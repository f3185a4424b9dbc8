"""Routes of the analysis service's results: anomalies, attributions, detector settings."""
