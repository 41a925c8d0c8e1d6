"""Backdoor mitigations (input filter, neuron pruning, unlearning)."""
