"""Evaluation: mIoU accumulation, the evaluation runner (progress, resume) and its protocols."""
