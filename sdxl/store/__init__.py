"""Where the server keeps what outlives a request: predictions and files."""
