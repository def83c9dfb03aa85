"""Losses, chosen by the trainers' ``build_loss``."""
