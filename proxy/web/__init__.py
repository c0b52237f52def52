"""The built-in page: `GET /` and the `/-/` JSON endpoints it is built on, read from the log off the event loop."""
