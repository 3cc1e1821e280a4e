"""Where a shed's address comes from: static config, shed-server API, metadata files."""
