"""Pure naming and routing rules: host and path in, shed and port (or a RouteError) out."""
