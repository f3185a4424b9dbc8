"""The lineage graph: datasets, runs and models linked by LineageLinked events."""
