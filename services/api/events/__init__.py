"""Raw event ingest: the SDK's HTTP transport posts envelopes here."""
