"""The coordinator: consent ledger, federation directory, and blind routing between provinces."""
