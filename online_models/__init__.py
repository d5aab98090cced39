"""Pure, in-memory recommender maths on batches: the ``Recommender`` contract (``online_models.base``),
the online state and its scoring, the models and their training. Never imports Kafka or Redis."""
