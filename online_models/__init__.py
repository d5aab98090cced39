"""Pure, in-memory recommender maths on batches. Never imports Kafka or Redis."""

from online_models.base import RecList, Recommender
from online_models.batch import PLAY, SKIP, EventBatch
from online_models.config import OnlineConfig
from online_models.online import OnlineALS

__all__ = ["PLAY", "SKIP", "EventBatch", "OnlineALS", "OnlineConfig", "RecList", "Recommender"]
