"""FAISS song indexes, versioned model artifacts, the registry of published versions and the swap holder."""
