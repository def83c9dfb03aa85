"""Task evaluators, each a short subclass of :class:`base.evaluator.EvaluatorBase`, and the predictors,
each a short subclass of :class:`evaluators.predictor.PredictorBase`."""
