"""Data path: sources -> clean -> split -> format -> tokenised cache -> resumable sampler."""
