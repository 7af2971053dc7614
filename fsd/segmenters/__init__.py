"""Segmenters."""
