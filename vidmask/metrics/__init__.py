"""Evaluation metrics (retrieval here; QA and captioning join them later)."""

from vidmask.metrics.retrieval import dual_softmax, ranks_t2v, ranks_v2t, retrieval_metrics, twin_accuracy

__all__ = ["dual_softmax", "ranks_t2v", "ranks_v2t", "retrieval_metrics", "twin_accuracy"]
