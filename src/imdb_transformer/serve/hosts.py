"""The local server's surface: which ``Host`` header names it answers (its loopback names, the address
it listens on, and ``--allowed_hosts``), so that a web page cannot reach it through DNS rebinding."""

import re
from collections.abc import Sequence

LOOPBACK = ("localhost", "127.0.0.1", "::1")  # the names of this machine a Host header may give


# the addresses LitServe can listen on (it refuses any other), and what each means
HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "0.0.0.0": "0.0.0.0", "::": "::"}


HOST_NAME = re.compile(r"\*|\[?[0-9A-Za-z._:%-]{1,253}\]?")


def allowed_host_names(host: str, extra: Sequence[str] = ()) -> frozenset[str] | None:
    """The names a request's ``Host`` header may give: this machine's loopback names, the address the
    server listens on unless it is every interface (0.0.0.0, ::), and ``extra``; None (no check)
    when ``extra`` holds ``*``."""
    names = [*LOOPBACK, *extra]
    if HOSTS.get(host, host) not in ("0.0.0.0", "::"):
        names.append(host)
    if "*" in names:
        return None
    return frozenset(host_name(name) for name in names)


def host_name(value: str) -> str:
    """The host of a ``Host`` header or of a name given: lower case, without its port, the brackets of
    an IPv6 address or a trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        inside, _, rest = value[1:].partition("]")
        if rest and not re.fullmatch(r":[0-9]{1,5}", rest):  # "[::1]evil.com": no host this server has
            return value
        value = inside
    elif value.count(":") == 1:  # name:port (an IPv6 address without brackets has several)
        value = value.partition(":")[0]
    return value.rstrip(".")


class HostCheck:
    """ASGI middleware answering 400 to a request whose ``Host`` header names none of ``allowed``.

    A web page can make a browser send requests to a local server through DNS rebinding (a name of
    the page's own that it points at 127.0.0.1); the browser still sends that name as ``Host``,
    which is how the server tells it from a request meant for it. A request without the header
    (HTTP/1.0; browsers always send it) is let through.
    """

    def __init__(self, app, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            hosts = [value for name, value in scope["headers"] if name == b"host"]
            # one Host header naming an allowed host; several (which may disagree) are refused too
            if len(hosts) > 1 or (hosts and host_name(hosts[0].decode("latin-1")) not in self.allowed):
                from fastapi.responses import JSONResponse

                names = ", ".join(sorted(self.allowed))
                message = (
                    f"this server answers requests for {names} only (the Host header names another "
                    "machine): start it with --allowed_hosts NAME to add the name clients use"
                )
                await JSONResponse({"error": message}, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)
