"""Human screening of event videos: export CSV batches, import decisions, publish shards/event."""
