"""The bottom layer: configs, errors, registries, files, devices, prompts, the hub.

Nothing here imports from the rest of the package.
"""
