"""agora's built-in scenarios; importing this package registers them."""
