"""`cope serve`: an OpenAI-compatible video chat API and a web page."""
