"""Datasets for the trainers: flags, checks and builders that return train/val/test splits."""
