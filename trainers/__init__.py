"""Task trainers: each is a short subclass of :class:`base.trainer.TrainerBase`."""
