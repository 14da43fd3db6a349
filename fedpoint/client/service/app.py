"""`create_app(config) -> FastAPI`: the site service, thin routers over one `ServiceState`."""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from fedpoint.client.service import monailabel, routes_volumes, routes_web
from fedpoint.client.service.site_config import SiteServiceConfig
from fedpoint.client.service.desk import Conflict
from fedpoint.client.service.images import ImageError
from fedpoint.client.service.security import (
    BodyLimitMiddleware,
    HeadMiddleware,
    InvalidId,
    PathTokenMiddleware,
    RedactQueryTokens,
    SecurityHeadersMiddleware,
    TokenGuard,
)
from fedpoint.client.service.state import ServiceState
from fedpoint.client.service.training import NotEnoughCases, TrainingBusy
from fedpoint.client.session import InputError
from fedpoint.client.site_store import StoreDamage
from fedpoint.shared.adapters import AdapterMismatchError
from fedpoint.shared.validation_errors import describe_validation_error

log = logging.getLogger("fedpoint.service")

# Each error a client can cause has its status; the message is the exception's own, written for people.
ERROR_STATUS: list[tuple[type[BaseException], int]] = [
    (InvalidId, 400),
    (InputError, 422),
    (ImageError, 422),
    (AdapterMismatchError, 422),
    (LookupError, 404),
    (TrainingBusy, 409),
    (NotEnoughCases, 409),
    (Conflict, 409),
    (StoreDamage, 409),
    (MemoryError, 413),
]
# An absolute path in a message (/a/b/c.nii.gz): only its last part reaches a client.
_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s/'\"(),:;]+){2,}/?")


def public_message(text: str) -> str:
    """A message for a client: server paths cut to their last part (the file's name)."""
    return _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], str(text))


def _handler(status: int):
    async def handle(_request: Request, exc: BaseException) -> JSONResponse:
        detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        if isinstance(exc, MemoryError):
            detail = "the request needs more memory than the service has; send a smaller file"
        return JSONResponse({"detail": public_message(detail)}, status_code=status)

    return handle


async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own checks (path, query, header, JSON body): a 422 naming each field, without
    echoing the value (an echoed infinity or a huge string would break or bloat the reply)."""
    problems = describe_validation_error(exc, limit=5, root="request")
    return JSONResponse({"detail": public_message(problems)}, status_code=422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """The last resort: logged in full here, a short message without server detail to the client."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the site's log has the details"},
                        status_code=500)


def _keep_uploads_in_memory(limit: int) -> None:
    """Starlette spools an uploaded file over 1 MiB to a temporary file; a label is patient data,
    so it stays in memory up to the body limit (which BodyLimitMiddleware enforces first)."""
    from starlette.formparsers import MultiPartParser

    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limit)


def create_app(config: SiteServiceConfig, state: ServiceState | None = None) -> FastAPI:
    """Loads the model now (a broken config fails at start, not at the first click)."""
    from fedpoint.client.service.users import UserRegistry

    guard = TokenGuard(config.resolve_token(), UserRegistry(config.users_path), config.allow_shared_token)
    _keep_uploads_in_memory(int(config.max_upload_mb * 2**20))
    state = state or ServiceState(config)
    state.guard = guard  # the routes ask it who a site-token client may be

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        access = logging.getLogger("uvicorn.access")  # configured by now: a token in a query never reaches it
        if not any(isinstance(f, RedactQueryTokens) for f in access.filters):
            access.addFilter(RedactQueryTokens())
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(title=f"fedpoint site {config.site}", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = state
    for exc_type, status in ERROR_STATUS:
        app.add_exception_handler(exc_type, _handler(status))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _unexpected)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict:  # on the event loop: answered even while every worker thread is busy
        return {"status": "ok"}

    app.include_router(routes_web.page_router())
    app.include_router(routes_web.api_router(state, guard.require))
    app.include_router(routes_volumes.volume_router(state, guard.require))
    app.include_router(monailabel.router(state, guard.require))
    app.include_router(monailabel.auth_router(guard))

    # Middleware added last runs first: path token -> body limit -> CORS (only if configured).
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["authorization", "content-type", "x-fedpoint-user"])
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(config.max_upload_mb * 2**20))
    app.add_middleware(HeadMiddleware)
    if config.token_in_path:
        app.add_middleware(PathTokenMiddleware, guard=guard)
    return app


def serve(config: SiteServiceConfig, app: FastAPI | None = None) -> None:
    """Run the service in the foreground (uvicorn) until interrupted."""
    import uvicorn

    app = app or create_app(config)
    # With tokens in paths the access log would write them to disk: keep it off then.
    tls = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)} if config.tls_cert else {}
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", ws="none",
                access_log=not config.token_in_path, **tls)
