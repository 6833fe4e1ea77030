"""Record contracts: manifest tables, shard sample metadata, screening CSV."""
