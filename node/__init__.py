"""Hedui (核对): a federated node for inter-provincial household economic verification."""

__version__ = "0.2.0"
