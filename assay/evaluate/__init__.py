"""Metrics, each defined once; never imports a method module."""
