"""The disk contract: atomic writes, sha256, safe checkpoint loading, manifests and run records."""
