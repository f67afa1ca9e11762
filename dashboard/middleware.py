"""Login for every page, also for the pages' own htmx refreshes; the client's address."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequired
from django.contrib.auth.views import redirect_to_login
from django_htmx.http import HttpResponseClientRedirect


class LoginRequiredMiddleware(DjangoLoginRequired):
    """Django's LoginRequiredMiddleware; a signed-out htmx refresh goes to the login page.

    A page that polls (the overview, a live run) keeps polling after its session expired.
    The browser would follow the redirect inside the request and htmx would swap the login
    form into the table; HX-Redirect makes htmx load the login page as a whole page, with
    `next` pointing back at the page the user was on rather than at the fragment.
    """

    def handle_no_permission(self, request, view_func):
        if request.headers.get("HX-Request") != "true":
            return super().handle_no_permission(request, view_func)
        page = urlsplit(request.headers.get("HX-Current-URL", ""))
        back = page.path + (f"?{page.query}" if page.query else "") if page.path else "/"
        login = redirect_to_login(
            back, self.get_login_url(view_func), self.get_redirect_field_name(view_func)
        )
        return HttpResponseClientRedirect(login["Location"])


def client_address(request) -> str | None:
    """Return the address of the client behind TRUSTED_PROXY_COUNT reverse proxies.

    Each proxy appends to X-Forwarded-For the address it received the request from, so
    only the last TRUSTED_PROXY_COUNT entries were written by proxies we trust: the
    outermost of them names the client. Entries further left come from the client and are
    ignored. Without trusted proxies, or when the header is shorter than the chain (a
    request that bypassed a proxy), the connection's own address is the answer.
    """
    remote = request.META.get("REMOTE_ADDR") or None
    count = settings.TRUSTED_PROXY_COUNT
    if not count:
        return remote
    header = request.META.get("HTTP_X_FORWARDED_FOR", "")
    hops = [hop.strip() for hop in header.split(",") if hop.strip()]
    if len(hops) < count:
        return remote
    try:
        return str(ipaddress.ip_address(hops[-count]))
    except ValueError:
        return remote
