"""The HTTP API and web page (LitServe): ``app`` builds the server from one table of endpoints,
``schemas`` checks requests, ``hosts`` guards the local surface, ``supervisor`` runs the processes as one
unit, ``client`` starts and calls a server from scripts; ``page.html`` is the page."""

from imdb_transformer.serve.app import ENDPOINTS, ServeConfig, build_server, describe, page, served
from imdb_transformer.serve.client import ServerProcess, free_port
from imdb_transformer.serve.supervisor import ServerStopped, run

__all__ = [
    "ENDPOINTS",
    "ServeConfig",
    "ServerProcess",
    "ServerStopped",
    "build_server",
    "describe",
    "free_port",
    "page",
    "run",
    "served",
]
