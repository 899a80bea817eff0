"""Every error the API returns is JSON `{"error": "<a sentence a person can read>"}` with a 4xx
status; unexpected failures are logged and answered with a 500 so the server keeps serving."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraworks.generation.errors import GenerationError, UnusableModel
from loraworks.lora import LoRABaseMismatch, LoRAError
from loraworks.models.errors import ModelError, ModelNotFound
from loraworks.models.guard import InstallTimedOut, InstallTooLarge

log = logging.getLogger("loraworks.server")


class ApiError(Exception):
    """A refusal with its HTTP status; raised by routes, rendered by `install_handlers`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def readable_validation_errors(errors: list[dict]) -> str:
    """`steps: must be >= 1; prompt: ...` from pydantic's error list, without the `body` noise."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "string_too_long":
            length = len(err.get("input") or "")
            msg = f"{msg} (got {length:,} characters)"
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "Invalid request: " + "; ".join(parts) + "."


#: pydantic's error types for a body that is missing or not a JSON object (a check of the whole
#: request, such as "strength only applies with an init_image", also has the location `body`)
_NOT_AN_OBJECT = frozenset({"missing", "model_attributes_type", "dict_type", "model_type"})


def _malformed_body(errors: list[dict]) -> str | None:
    """Why the body is not a JSON object at all (then the answer is 400, not 422), or None."""
    for err in errors:
        if err.get("type") == "json_invalid":
            return f"The request body is not valid JSON ({err.get('ctx', {}).get('error', '')})."
        if tuple(err.get("loc", ())) == ("body",) and err.get("type") in _NOT_AN_OBJECT:
            return "The request body must be a JSON object (Content-Type: application/json)."
    return None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if malformed := _malformed_body(errors):
            return error_response(400, malformed)
        return error_response(422, readable_validation_errors(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"Nothing at {request.url.path}."
        return error_response(exc.status_code, message)

    @app.exception_handler(ModelNotFound)
    async def _not_found(_: Request, exc: ModelNotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(UnusableModel)
    async def _unusable(_: Request, exc: UnusableModel) -> JSONResponse:
        return error_response(409, str(exc))

    for refusal, status in ((InstallTimedOut, 408), (InstallTooLarge, 413)):

        @app.exception_handler(refusal)
        async def _install_refused(
            _: Request, exc: Exception, status: int = status
        ) -> JSONResponse:
            return error_response(status, str(exc))

    @app.exception_handler(LoRABaseMismatch)
    async def _base_mismatch(_: Request, exc: LoRABaseMismatch) -> JSONResponse:
        return error_response(409, str(exc))

    for user_error in (ModelError, LoRAError, GenerationError):

        @app.exception_handler(user_error)
        async def _user_error(_: Request, exc: Exception) -> JSONResponse:
            return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal error ({type(exc).__name__}); see the server log.")
