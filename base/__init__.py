"""Abstract trainer and evaluator that own the loop; tasks subclass them."""
