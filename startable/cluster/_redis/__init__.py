"""Redis: the registry and link of many hosts, and a server to embed (the `redis` extras)."""
