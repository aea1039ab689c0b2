"""A node's metrics: read at scrape time (`snapshot`), exposed for Prometheus (`prometheus`,
imported only when metrics are on)."""
