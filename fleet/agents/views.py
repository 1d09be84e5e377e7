"""HTTP API used by agents: enrollment (token → node secret) and secret rotation."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from fleet.inventory.services import InventoryError, authenticate_node, enroll, rotate_credential
from fleet.lib.http import request_bearer

MAX_BODY = 64 * 1024


def _error(field: str, message: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": message, "field": field}, status=status)


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if len(request.body) > MAX_BODY:
        raise InventoryError("body", f"request body is over {MAX_BODY} bytes", 413)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise InventoryError("body", "request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InventoryError("body", "request body must be a JSON object")
    return body


@csrf_exempt  # agents authenticate with the enrollment token in the body, not a browser session
@require_POST
def enroll_view(request: HttpRequest) -> JsonResponse:
    try:
        body = _json_body(request)
        for field in ("token", "hostname"):
            if not isinstance(body.get(field), str):
                raise InventoryError(field, f"{field} is required and must be a string")
        for field in ("name", "kind"):
            if body.get(field) is not None and not isinstance(body[field], str):
                raise InventoryError(field, f"{field} must be a string")
        result = enroll(
            body["token"],
            name=body.get("name") or None,
            hostname=body["hostname"],
            kind=body.get("kind") or None,
            labels=body.get("labels"),
        )
    except InventoryError as error:
        return _error(error.field, error.message, error.status)
    return JsonResponse(
        {"node_id": result.node.pk, "node_name": result.node.name, "secret": result.secret}, status=201
    )


@csrf_exempt
@require_POST
def rotate_view(request: HttpRequest) -> JsonResponse:
    credential = authenticate_node(request_bearer(request))
    if credential is None:
        return _error("authorization", "unknown or revoked node secret", 401)
    try:
        secret = rotate_credential(credential)
    except InventoryError as error:
        return _error(error.field, error.message, error.status)
    return JsonResponse({"secret": secret, "node_id": credential.node_id})
