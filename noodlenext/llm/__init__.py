"""Language-model explanations of the classifier's decisions, and multi-turn chat about them."""
