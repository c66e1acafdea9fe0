"""Applications built on ramraft's embedding API (server/embed.py)."""
