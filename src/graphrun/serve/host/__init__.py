"""The engine host: how the HTTP side reaches any served model, in a thread or a process of its own."""
