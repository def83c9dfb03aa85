"""Task evaluators: each is a short subclass of :class:`base.evaluator.EvaluatorBase`."""
