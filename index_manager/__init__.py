"""FAISS song indexes, versioned model artifacts and the swap-by-reference holder."""
