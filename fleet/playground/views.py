"""The playground page, its conversation-history JSON API, and the admin's "viewers may chat" toggle.

History API (JSON in and out; CSRF header on writes; every conversation visible to its owner only —
another user's id answers 404):
  GET    api/conversations/                  → {"conversations": [summary, ...]} newest first
  POST   api/conversations/                  {title?, mode, target, target_b?, system_prompt?, params?} → 201
  GET    api/conversations/<id>/             → detail with "messages"
  PATCH  api/conversations/<id>/             {title?, target?, target_b?, system_prompt?, params?}
  DELETE api/conversations/<id>/             → 204
  POST   api/conversations/<id>/messages/    {"role": "user", content, replaces?} |
                                             {"role": "assistant", reply_to, lane, content, finish_reason, ...}
  POST   api/conversations/<id>/truncate/    {"after": message_id} (regenerate)
Errors: {"errors": {"<field path>": "<what is wrong>"}} with 400 (invalid), 404, 409 (state conflict).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST
from pydantic import BaseModel, ValidationError

from fleet import events
from fleet.accounts.audit import record
from fleet.accounts.models import Role
from fleet.accounts.permissions import admin_required
from fleet.playground import history
from fleet.playground.access import may_chat
from fleet.playground.models import Conversation, FinishReason, PlaygroundAccess
from fleet.playground.schemas import (
    AssistantMessageIn,
    ConversationIn,
    ConversationPatch,
    Target,
    Truncate,
    UserMessageIn,
    field_errors,
)

LIST_LIMIT = 200
NOT_ALLOWED = ("The playground is for operators and admins. An admin can let viewers chat too "
               "(the \u201cViewers may chat\u201d switch on the playground page).")


def chat_required(api: bool = False) -> Callable:
    """Logged out → login page (API: 401); no permission → the 403 page (API: 403 JSON)."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not request.user.is_authenticated:
                if api:
                    return _errors({"auth": "log in first"}, 401)
                return redirect_to_login(request.get_full_path())
            if not may_chat(request.user):
                if api:
                    return _errors({"auth": NOT_ALLOWED}, 403)
                raise PermissionDenied(NOT_ALLOWED)
            return view(request, *args, **kwargs)

        wrapper.required_role = Role.VIEWER  # at least; may_chat decides (read by the every-URL test)
        return wrapper

    return decorator


def _errors(errors: dict[str, str], status: int) -> JsonResponse:
    return JsonResponse({"errors": errors}, status=status)


def _parse(request: HttpRequest, schema: type[BaseModel]) -> BaseModel | JsonResponse:
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        return _errors({"body": "send a JSON object (Content-Type: application/json)"}, 400)
    if not isinstance(body, dict):
        return _errors({"body": "send a JSON object"}, 400)
    try:
        return schema.model_validate(body)
    except ValidationError as error:
        return _errors(field_errors(error), 400)


def _owned(request: HttpRequest, pk: int) -> Conversation | None:
    return Conversation.objects.filter(pk=pk, owner=request.user).first()


def _not_found(pk: int) -> JsonResponse:
    return _errors({"id": f"you have no conversation {pk}"}, 404)


def parse_lane(value: str) -> Target | None:
    """`ORG/NAME@SHA`, `ORG/NAME` or `node:12` (the compare link's `a`/`b` parameters)."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("node:"):
        raw: dict[str, Any] = {"node": value[5:]}
    else:
        model, _, sha = value.partition("@")
        raw = {"model": model, **({"sha": sha} if sha else {})}
    return Target.model_validate(raw)


@chat_required()
@require_http_methods(["GET"])
def playground(request: HttpRequest) -> HttpResponse:
    compare: dict[str, Any] = {}
    for lane in ("a", "b"):
        try:
            target = parse_lane(request.GET.get(lane, ""))
        except ValidationError as error:
            detail = "; ".join(f"{k}: {v}" if k != "body" else v for k, v in field_errors(error).items())
            messages.error(request, f"Compare link parameter {lane}: {detail}. Use ORG/NAME@SHA (40 hex) or node:ID.")
            target = None
        if target is not None:
            compare[lane] = target.model_dump(exclude_none=True)
    context = {
        "compare_mode": request.GET.get("compare") == "1" or bool(compare),
        "compare_targets": compare,
        "access": PlaygroundAccess.current() if request.user.has_role(Role.ADMIN) else None,
        "open_conversation": request.GET.get("c", "") if request.GET.get("c", "").isdigit() else "",
        # How an answer's end is shown (label, badge colour), from the one place that says it.
        "finish_reasons": json.dumps({reason.value: [reason.label.lower(), reason.colour] for reason in FinishReason}),
    }
    return render(request, "playground/playground.html", context)


@admin_required
@require_POST
def access_update(request: HttpRequest) -> HttpResponse:
    allow = request.POST.get("viewers_may_chat") == "on"
    with transaction.atomic():
        access, _ = PlaygroundAccess.objects.select_for_update().get_or_create(pk=1)
        if access.viewers_may_chat != allow:
            access.viewers_may_chat = allow
            access.updated_by = request.user
            access.save()
            record(request.user, "playground.access", access, viewers_may_chat=allow)
            if not allow:
                # Viewers' open chat sockets were allowed under the old setting: close them.
                viewers = get_user_model().objects.filter(role=Role.VIEWER, is_superuser=False)
                for viewer_id in viewers.values_list("pk", flat=True):
                    events.publish(events.user_group(viewer_id), {"type": "user.changed"})
    messages.success(request, "Viewers may now use the playground." if allow
                     else "The playground is for operators and admins only.")
    return redirect("playground:page")


@chat_required(api=True)
@never_cache
@require_http_methods(["GET", "POST"])
def conversation_list(request: HttpRequest) -> JsonResponse:
    if request.method == "POST":
        data = _parse(request, ConversationIn)
        if isinstance(data, JsonResponse):
            return data
        conversation = history.create_conversation(request.user, data)
        conversation.message_count = 0
        return JsonResponse(history.conversation_summary(conversation), status=201)
    rows = history.conversations_of(request.user)[:LIST_LIMIT]
    return JsonResponse({"conversations": [history.conversation_summary(row) for row in rows]})


@chat_required(api=True)
@never_cache
@require_http_methods(["GET", "PATCH", "DELETE"])
def conversation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = _owned(request, pk)
    if conversation is None:
        return _not_found(pk)
    if request.method == "DELETE":
        conversation.delete()
        return HttpResponse(status=204)
    if request.method == "PATCH":
        data = _parse(request, ConversationPatch)
        if isinstance(data, JsonResponse):
            return data
        try:
            history.update_conversation(conversation, data)
        except history.HistoryError as error:
            return _errors({error.field: error.message}, 409)
    return JsonResponse(history.conversation_detail(conversation))


@chat_required(api=True)
@require_POST
def message_create(request: HttpRequest, pk: int) -> JsonResponse:
    conversation = _owned(request, pk)
    if conversation is None:
        return _not_found(pk)
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        body = None
    role = body.get("role") if isinstance(body, dict) else None
    if role not in ("user", "assistant"):
        return _errors({"role": "must be \"user\" or \"assistant\""} if isinstance(body, dict)
                       else {"body": "send a JSON object"}, 400)
    reply_to = body.pop("reply_to", None) if role == "assistant" else None
    if role == "assistant" and (not isinstance(reply_to, int) or isinstance(reply_to, bool) or reply_to < 1):
        return _errors({"reply_to": "give the id of the user message this answers"}, 400)
    try:
        data = (UserMessageIn if role == "user" else AssistantMessageIn).model_validate(body)
    except ValidationError as error:
        return _errors(field_errors(error), 400)
    try:
        if role == "user":
            message = history.add_user_message(conversation, data)
        else:
            message = history.add_assistant_message(conversation, reply_to, data)
    except history.HistoryError as error:
        return _errors({error.field: error.message}, 409)
    return JsonResponse({"message": history.message_dict(message), "title": conversation.title}, status=201)


@chat_required(api=True)
@require_POST
def conversation_truncate(request: HttpRequest, pk: int) -> JsonResponse:
    conversation = _owned(request, pk)
    if conversation is None:
        return _not_found(pk)
    data = _parse(request, Truncate)
    if isinstance(data, JsonResponse):
        return data
    try:
        deleted = history.truncate_after(conversation, data.after)
    except history.HistoryError as error:
        return _errors({error.field: error.message}, 409)
    return JsonResponse({"deleted": deleted})
