"""Request handlers, one module per request family; ``..dispatch`` maps types to them."""
