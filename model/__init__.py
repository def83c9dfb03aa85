"""Models, looked up by ``--model_type`` through :func:`model.classifiers.build_classifier`."""
