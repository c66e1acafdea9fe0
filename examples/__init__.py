"""Applications built on ramraft's embedding API (server/machines/embed.py,
imported as ``from ramraft import ReplicatedModel, command``)."""
