"""The worker: a Faust app with named agents (``app``) around one micro-batch processor
(``processor``), each of its other jobs in a small module of its own, and its start-up (``start``).

Importing this package imports nothing else: readers of the workers' stats (``stats``) need no Faust.
"""
