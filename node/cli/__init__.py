"""The `hedui` command line: one module per command group, wired in node.cli.main."""
