"""The edges: event contract, Kafka and Redis adapters, the worker (``stream.worker``), the read API
and dashboard (``stream.api``), settings, embedded services and the CLI."""
