"""geomesh: governed ingestion of COG tiles into domain-scoped STAC data products."""

__version__ = "0.1.0"
