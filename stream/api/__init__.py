"""The read API and live dashboard (``musicrec api``): the app (``app``), its handlers (``routes``),
the background monitor split into worker rates, freshness and consumer lag, and Prometheus rendering."""
