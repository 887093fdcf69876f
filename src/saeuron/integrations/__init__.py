"""Adapters that let other frameworks drive saeuron's technique unchanged."""
