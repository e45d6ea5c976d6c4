"""What every call passes through before the servicer: the TCP endpoint's token check, and a refusal with a clear
status for requests that do not parse. server.py puts them in front of the servicer on each endpoint."""
from __future__ import annotations

import hmac

import grpc
from google.protobuf.message import DecodeError


#: Served over TCP without the token: a health probe learns only SERVING / NOT_SERVING, nothing about the
#: model or the user's data, and standard probes (grpc_health_probe, load balancers) send no token.
_OPEN_SERVICE_PREFIX = "/grpc.health.v1.Health/"


class TokenAuth(grpc.ServerInterceptor):
    """Refuses every call on the TCP endpoint that lacks `authorization: Bearer <token>` (the scheme in any case),
    health checks aside."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (authorization: Bearer TOKEN)")
        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_OPEN_SERVICE_PREFIX):
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata).get("authorization", "")
        scheme, _, credentials = given.strip().partition(" ")
        # The scheme is case-insensitive (RFC 7235 section 2.1): "bearer TOKEN" is as good as "Bearer TOKEN".
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is not None and handler.response_streaming:
            return self._deny_stream
        return self._deny


class UndecodableRequests(grpc.ServerInterceptor):
    """Ends a call whose request does not parse (a text or path that is not UTF-8, a truncated message) with
    INVALID_ARGUMENT and protobuf's reason. grpc's own answer is INTERNAL "Exception deserializing request!",
    which tells the client nothing and reads as the daemon's fault.

    A deserializer that raises cannot choose the status, so a failed parse is passed on as `_Undecodable`
    and the wrapped handler refuses it before the servicer sees it.
    """

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer

        def parse(raw: bytes):
            try:
                return deserialize(raw)
            except DecodeError as exc:
                return _Undecodable(str(exc))

        if handler.response_streaming:
            stream = handler.unary_stream

            def unary_stream(request, context):
                _refuse_undecodable(request, context)
                yield from stream(request, context)
            return handler._replace(request_deserializer=parse, unary_stream=unary_stream)
        unary = handler.unary_unary

        def unary_unary(request, context):
            _refuse_undecodable(request, context)
            return unary(request, context)
        return handler._replace(request_deserializer=parse, unary_unary=unary_unary)


class _Undecodable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _refuse_undecodable(request: object, context: grpc.ServicerContext) -> None:
    if isinstance(request, _Undecodable):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"the request could not be parsed ({request.reason}); text and paths must be valid UTF-8")
