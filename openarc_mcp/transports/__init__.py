"""Transports: the wire protocols that reach the application object."""
