"""Offline side: the DuckDB event log, importers, training jobs and evaluation."""
