"""Login for every page, also for the pages' own htmx refreshes."""

from __future__ import annotations

from urllib.parse import urlsplit

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
