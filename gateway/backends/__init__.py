"""Routing to several backends."""
