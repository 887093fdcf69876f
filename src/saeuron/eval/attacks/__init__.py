"""Adversarial-prompt attacks that the attack-success metrics run against a technique."""
