"""Clusters: registry, the local provider, attach."""
