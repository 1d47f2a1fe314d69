"""Batch: length-sorted batches under a token budget (the plan lives with the model, which uses the
same loop for the API and the job; see ``elmo_dist.model.batching``)."""

from elmo_dist.model.batching import padding_ratio, plan_batches

__all__ = ["padding_ratio", "plan_batches"]
