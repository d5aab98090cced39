"""The edges: event contract, Kafka/Faust worker, Redis I/O, embedded services and the CLI."""
