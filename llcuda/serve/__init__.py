"""llcuda's OpenAI-compatible HTTP server on its own engine, and the browser chat page it serves."""
