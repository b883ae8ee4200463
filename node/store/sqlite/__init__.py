"""The SQLite backend (the default, `[store] url = "sqlite:"`): one file per store under the member's data_dir."""
