"""Plain, typed request handling: what a node or coordinator decides, with no gRPC in sight."""
