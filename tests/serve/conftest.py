"""tests/serve: pytest puts this folder on sys.path for this file, so its helper modules (serve_harness.py,
app_servers.py, cli_server.py, tensor_fuzz.py) import by name in the tests of act/ and infer/ too."""
