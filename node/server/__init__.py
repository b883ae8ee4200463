"""gRPC edge: credentials, servicers (thin adapters), error mapping, server lifecycle."""
