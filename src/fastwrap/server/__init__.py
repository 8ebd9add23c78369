"""fastwrap's own HTTP server, behind ``fastwrap serve``."""
